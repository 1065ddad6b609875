"""Optimizer, learning-rate schedule and precision for one training window.

Each window (day-by-day training) gets a fresh AdamW and schedule, as the reference's
protocol does. Schedules: linear warm-up then linear decay to 0, cosine (half a cycle
over the window, or N cycles per epoch), or constant after warm-up.
"""
from __future__ import annotations

import contextlib
import functools
import math

import torch

from rayrec.train.config import TrainConfig


def make_optimizer(model: torch.nn.Module, tcfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    # fused: one kernel over all parameters; catalogue-sized tables make the update costly
    return torch.optim.AdamW(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay, fused=True)


def lr_factor(step: int, total: int, steps_per_epoch: int, tcfg: TrainConfig) -> float:
    """The multiplier of the base learning rate at optimizer step `step` of `total`."""
    warm = int(tcfg.warmup * total)
    if step < warm:
        return (step + 1) / warm
    if tcfg.schedule == "constant":
        return 1.0
    progress = (step - warm) / max(1, total - warm)
    if tcfg.schedule == "linear":
        return max(0.0, 1.0 - progress)
    cycles = 0.5 if tcfg.cosine_cycles_per_epoch is None else \
        tcfg.cosine_cycles_per_epoch * total / max(1, steps_per_epoch)
    return 0.5 * (1.0 + math.cos(2 * math.pi * cycles * progress))


def make_schedule(optimizer: torch.optim.Optimizer, tcfg: TrainConfig, steps_per_epoch: int):
    total = max(1, steps_per_epoch * tcfg.epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, steps_per_epoch, tcfg))


@functools.cache
def cpu_has_amx_bf16() -> bool:
    """The CPU multiplies bf16 in AMX tiles (Linux's cpu flags; False where unreadable)."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " amx_bf16" in line for line in f)
    except OSError:
        return False


def precision(tcfg: TrainConfig, device: torch.device, worker_group: bool = False) -> str:
    """train.precision with `auto` resolved: bf16 where bf16 matmuls run natively (AMX
    CPUs: the logits and body matmuls 2.5-3.6x faster here, at the same NDCG, per
    BENCHMARKS.md; GPUs that support it), fp32 elsewhere (AVX-512 without AMX emulates bf16).
    Ray Train workers stay fp32 under auto: a two-node DDP run stopped and resumed under
    bf16 ended 3.5e-4 NDCG@20 away from the uninterrupted one, and exact resume is a
    promise; bf16 there is one `train.precision: bf16` away. In-process bf16 repeats bit
    for bit on an idle machine only: with other processes busy on the cores, oneDNN's bf16
    matmuls gave 2 of 6 fresh runs another 5th-digit loss (fp32: 6 of 6 the same), a cost
    the 2.5-3.6x is worth by default; docs/train-config.md says so under `seed`."""
    if tcfg.precision != "auto":
        return tcfg.precision
    if worker_group:
        return "fp32"
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_amx_bf16() else "fp32"


def autocast(chosen: str, device: torch.device):
    """bf16 autocast on CPU or GPU, fp16 on GPU; nothing for fp32 (`chosen`: precision()'s answer)."""
    if chosen == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if chosen == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(chosen: str, device: torch.device):
    """fp16 needs loss scaling against gradient underflow; bf16 and fp32 do not."""
    enabled = chosen == "fp16" and device.type == "cuda"
    return torch.amp.GradScaler(device.type, enabled=enabled)
