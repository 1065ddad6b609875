"""Dropout whose mask costs less on CPU.

torch's CPU dropout draws one Bernoulli sample per element, which on the reference
config took about a fifth of a training step (benchmarks/model_step.py). Where rayrec's C
kernels build (native.py), dropout is one pass each way: the mask is a hash of a seed
drawn from torch's generator and the element's position (dropout.c), recomputed in the
backward instead of stored. Elsewhere it draws one 64-bit random integer per four
elements and compares 16-bit slices of it with a threshold. Either way the keep
probability is exact to 1/65536, and torch.manual_seed fixes the draw. On CUDA, torch's
own dropout (already cheap there) is used.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rayrec.models import native


def keep_mask(shape: torch.Size, p: float, device) -> torch.Tensor:
    n = shape.numel()
    bits = torch.randint(-2**63, 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=device)
    threshold = -32768 + round(p * 65536)
    return (bits.view(torch.int16)[:n] >= threshold).view(shape)


def hashed(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """x * keep / (1 - p), the mask a function of (seed, position) only (dropout.c)."""
    x = x.contiguous()
    out = torch.empty_like(x)
    native.library().dropout_apply(x.numel(), x.data_ptr(), out.data_ptr(), int(x.dtype == torch.bfloat16), seed,
                                   round(p * 65536), 1 / (1 - p), torch.get_num_threads())
    return out


class HashedDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
        ctx.p, ctx.seed = p, seed
        return hashed(x, p, seed)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return hashed(grad, ctx.p, ctx.seed), None, None


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    if not training or p == 0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    if x.dtype in (torch.float32, torch.bfloat16) and native.enabled():
        return HashedDropout.apply(x, p, int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64)))
    scale = torch.tensor(1 / (1 - p), dtype=x.dtype)
    return x * keep_mask(x.shape, p, x.device).to(x.dtype).mul_(scale)


class FastDropout(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)


def use_fast_dropout(module: nn.Module) -> nn.Module:
    """Swap every nn.Dropout inside `module` (e.g. an HF model) for FastDropout."""
    for name, child in module.named_children():
        if isinstance(child, nn.Dropout):
            setattr(module, name, FastDropout(child.p))
        else:
            use_fast_dropout(child)
    return module
