"""The training loop each Ray Train worker runs (and `--workers 0` runs in-process).

Day by day: train on day t's sessions starting from the weights left by day t-1 (a fresh
optimizer and learning-rate schedule each day), evaluate on day t+1, and report the
metrics with a checkpoint. After a worker failure Ray restarts the group, which resumes
from the last reported checkpoint at the next day.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from rayrec.metrics import finalize
from rayrec.models.batch import Batch, concat_batches, take, to_tensors
from rayrec.models.checkpoint import load_weights, new_model, save_model
from rayrec.models.config import ModelConfig
from rayrec.models.features import FeatureSpec
from rayrec.models.session_model import SessionModel
from rayrec.train.allocator import keep_freed_memory
from rayrec.train.config import TrainConfig
from rayrec.train.data import load_batch, shard_rows, split_path
from rayrec.train.progress import Progress
from rayrec.train.state import apply_train_state, read_train_state, save_train_state
from rayrec.train.optim import autocast, grad_scaler, make_optimizer, make_schedule
from rayrec.train.evaluate import model_metric_sums

PROGRESS = "progress.json"


def train_loop_per_worker(spec: dict) -> None:
    tcfg = TrainConfig(**spec["train"])
    mcfg = ModelConfig(**spec["model"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(tcfg.threads_per_worker)
    keep_freed_memory()
    torch.manual_seed(tcfg.seed)
    features = [FeatureSpec(**f) for f in spec["features"]]
    model = new_model(mcfg, features)
    targets = [h.target for h in mcfg.heads]

    def load(day: int, split: str) -> Batch:  # this worker's shard of the day's split
        return load_batch(split_path(spec["data_dir"], day, split), features, targets, mcfg.max_len, rank, world)

    history: list[dict] = []
    attempt, state = 0, None  # worker-group restarts so far; a window's unfinished training state
    checkpoint = ray.train.get_checkpoint()  # after a failure: the group's last checkpoint
    if checkpoint:
        with checkpoint.as_directory() as d:
            history, state = restore(model, d)
        earlier = [r.get("attempt", 0) for r in history] + ([state["partial"].get("attempt", 0)] if state else [])
        attempt = max(earlier, default=0) + 1
        if rank == 0:
            where = f", day {state['partial']['window']} after epoch {state['partial']['epochs_done']}" if state else ""
            print(f"[rayrec] restart {attempt} from the last checkpoint: {len(history)} window(s) done{where}",
                  flush=True)
    elif spec.get("resume_from"):  # `rayrec train --resume RUN`: that run's final checkpoint
        history, _ = restore(model, spec["resume_from"])
    start = len(history)
    trained, planned = [r["train_day"] for r in history], [window[0] for window, _ in spec["days"]]
    if planned[:start] != trained:
        raise ValueError(f"the checkpoint has trained days {trained}, which do not begin the planned days {planned}")
    device = ray.train.torch.get_device() if tcfg.use_gpu else torch.device("cpu")
    model = ray.train.torch.prepare_model(model) if world > 1 else model.to(device)
    core: SessionModel = model.module if hasattr(model, "module") else model

    for step, (window, eval_day) in enumerate(spec["days"]):
        if step < start:
            continue
        train_day = window[0]
        data = concat_batches([load(d, "train") for d in window])

        def epoch_done(partial: dict, optimizer, schedule) -> None:  # mid-window checkpoint
            report_partial(core, history, dict(partial, attempt=attempt), optimizer, schedule, spec, rank, tcfg)

        train = train_one_day(model, tcfg, data, rank, world, train_day, device,
                              state if state and state["partial"]["window"] == train_day else None,
                              epoch_done if tcfg.checkpoint_every == "epoch" else None)
        state = None
        record = {"train_day": train_day, "window": window, "eval_day": eval_day, "attempt": attempt, **train}
        if eval_day is not None:
            batch = load_batch(split_path(spec["data_dir"], eval_day, tcfg.eval_split), features, targets,
                               mcfg.max_len, rank, world, cover_all=True)
            scores = finalize(all_reduce_sums(model_metric_sums(core, batch, tcfg.eval_batch_size, device=device)))
            if scores["count"]:
                record.update(scores)
            else:  # nothing to evaluate on that day: the record carries no metrics
                record["eval_day"] = None
        if world > 1:
            record.update(replica_check(core))
        history.append(record)
        report(core, record, history, spec, rank)


def restore(model: torch.nn.Module, directory: str) -> tuple[list[dict], dict | None]:
    """Weights, the per-window history and, for a mid-window checkpoint, the optimizer
    and schedule state with the window's progress."""
    load_weights(model, directory)
    with open(os.path.join(directory, PROGRESS)) as f:
        history = json.load(f)["history"]
    return history, read_train_state(directory)


def train_one_day(model, tcfg: TrainConfig, data: Batch, rank: int, world: int, day: int,
                  device: torch.device = torch.device("cpu"), resume: dict | None = None,
                  epoch_done=None) -> dict:
    """Epochs over this worker's shard: fresh AdamW and schedule (or, with `resume`, the
    saved ones, from the epoch after the last one finished), optional autocast, gradient
    accumulation (without DDP syncs on the inner micro-batches) and clipping.
    `epoch_done(partial, optimizer, schedule)` runs after every epoch but the last."""
    optimizer = make_optimizer(model, tcfg)
    n = len(next(iter(data.values())))
    micro = -(-n // tcfg.batch_size)  # micro-batches per epoch on this worker's shard
    steps_per_epoch = max(1, -(-micro // tcfg.grad_accum))
    schedule = make_schedule(optimizer, tcfg, steps_per_epoch)
    scaler = grad_scaler(tcfg, device)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    progress = Progress(f"day {day}", micro * tcfg.epochs, enabled=rank == 0)
    losses, seen, first_epoch, before = [], 0, 0, 0.0
    if resume:
        apply_train_state(resume, optimizer, schedule)
        p = resume["partial"]
        losses, seen, first_epoch, before = p["losses"], p["seen"], p["epochs_done"], p["seconds"]
    started = time.perf_counter()
    for epoch in range(first_epoch, tcfg.epochs):
        torch.manual_seed(tcfg.seed * 1_000_003 + day * 1009 + epoch * 31 + rank)  # masks, dropout
        rows = shard_rows(n, rank, world, seed=tcfg.seed * 7919 + day * 101 + epoch)
        starts = range(0, len(rows), tcfg.batch_size)
        for j, i in enumerate(starts):
            batch = on_device(to_tensors(take(data, rows[i:i + tcfg.batch_size])), device)
            last_micro = (j + 1) % tcfg.grad_accum == 0 or j == len(starts) - 1
            sync = contextlib.nullcontext() if last_micro or not hasattr(model, "no_sync") else model.no_sync()
            with sync:
                with autocast(tcfg, device):
                    loss = model(batch)
                scaler.scale(loss / tcfg.grad_accum).backward()
            if last_micro:
                if tcfg.grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                schedule.step()
            losses.append(loss.item())
            seen += len(rows[i:i + tcfg.batch_size])
            progress.update(epoch, losses[-1], len(rows[i:i + tcfg.batch_size]) * world)
        if epoch_done is not None and epoch < tcfg.epochs - 1:
            epoch_done({"window": day, "epochs_done": epoch + 1, "losses": losses, "seen": seen,
                        "seconds": before + time.perf_counter() - started}, optimizer, schedule)
    progress.close()
    seconds = before + time.perf_counter() - started
    return {"train_loss": float(np.mean(losses[-max(1, len(losses) // 4):])) if losses else float("nan"),
            "first_loss": losses[0] if losses else float("nan"),
            "train_sequences": seen * world, "train_seconds": round(seconds, 3),
            "sequences_per_s": round(seen * world / seconds, 1) if seconds > 0 else 0.0}


def on_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """CPU tensors as they are; for a GPU, pinned and copied without blocking."""
    if device.type == "cpu":
        return batch
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}


def replica_check(model: torch.nn.Module) -> dict:
    """DDP keeps every rank's weights bit-identical; check it (a digest per rank,
    gathered) and count the nodes the ranks ran on."""
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    node = ray.get_runtime_context().get_node_id()
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (digest.hexdigest(), node))
    in_sync = len({d for d, _ in gathered}) == 1
    if not in_sync:
        print(f"[rayrec] WARNING: model replicas differ across ranks: {[d[:12] for d, _ in gathered]}", flush=True)
    return {"replicas_in_sync": int(in_sync), "nodes": len({n for _, n in gathered})}


def all_reduce_sums(sums: dict[str, float]) -> dict[str, float]:
    if not (dist.is_available() and dist.is_initialized()):
        return sums
    keys = sorted(sums)
    t = torch.tensor([sums[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def report_partial(model: SessionModel, history: list[dict], partial: dict, optimizer, schedule, spec: dict,
                   rank: int, tcfg: TrainConfig) -> None:
    """A mid-window checkpoint: weights, optimizer and schedule, and how far the window got.
    Its score for keeping the best is the last finished window's (0 before any)."""
    metrics = {"train_day": partial["window"], "epochs_done": partial["epochs_done"]}
    if tcfg.checkpoint_metric:
        metrics[tcfg.checkpoint_metric] = history[-1].get(tcfg.checkpoint_metric, 0.0) if history else 0.0
    name = f"day-{partial['window']:03d}-epoch-{partial['epochs_done']:03d}"
    report_checkpoint(model, history, metrics, name, spec, rank,
                      lambda d: save_train_state(d, optimizer, schedule, partial))


def report(model: SessionModel, record: dict, history: list[dict], spec: dict, rank: int) -> None:
    """The end of a window: its record (metrics) with weights and history."""
    metrics = {k: v for k, v in record.items() if isinstance(v, (int, float)) and v is not None}
    if rank == 0:
        print(f"[rayrec] day {record['train_day']}: loss {record['train_loss']:.3f}, "
              f"{record['sequences_per_s']:.0f} seq/s"
              + (f", day {record['eval_day']} recall@20 {record['recall@20']:.3f} ndcg@20 {record['ndcg@20']:.3f}"
                 if record.get("eval_day") is not None else ""), flush=True)
    report_checkpoint(model, history, metrics, f"day-{record['train_day']:03d}", spec, rank)


def report_checkpoint(model: SessionModel, history: list[dict], metrics: dict, name: str, spec: dict, rank: int,
                      write_more=None) -> None:
    """Every rank reports `metrics`; rank 0 attaches the checkpoint: weights, the history
    of finished windows and whatever `write_more(directory)` adds."""
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    directory = os.path.join(spec["scratch"], name)
    save_model(model, directory, extra={"item_col": spec["item_col"]})
    if write_more is not None:
        write_more(directory)
    with open(os.path.join(directory, PROGRESS), "w") as f:
        json.dump({"history": history}, f, indent=2)
    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
