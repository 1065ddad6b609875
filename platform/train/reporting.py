"""What the workers tell the driver: metrics, the loss curve and checkpoints, plus the
collectives that make those numbers whole (metric sums, the replica check).

Every rank reports at the same points (Ray Train needs all of them); rank 0 attaches the
checkpoint and the loss curve. Where a report goes is the session's business (session.py).
"""
from __future__ import annotations

import hashlib

import ray
import torch
import torch.distributed as dist

from rayrec.models.session_model import SessionModel
from rayrec.train import checkpoints
from rayrec.train.progress import say
from rayrec.train.spec import RunSpec


class Reporter:
    def __init__(self, spec: RunSpec, session):
        self.spec, self.session, self.tcfg = spec, session, spec.train

    def partial(self, model: SessionModel, history: list[dict], partial: dict, optimizer, schedule,
                scores: dict | None = None) -> None:
        """A checkpoint inside a window: weights, optimizer, schedule and the position
        (window, epoch, batch), with an epoch's evaluation when `scores` has one. Its score
        for keeping the best is that evaluation's, else the last finished window's (0 before any)."""
        curve = partial.pop("curve")
        metrics = {"train_day": partial["window"], "epochs_done": partial["epochs_done"],
                   "micro_done": partial["micro_done"], "global_step": partial["global_step"], **(scores or {})}
        if scores:
            say(f"[rayrec] day {partial['window']} epoch {partial['epochs_done']}: day {scores['eval_day']} "
                f"recall@20 {scores['recall@20']:.3f} ndcg@20 {scores['ndcg@20']:.3f}")
        if self.tcfg.checkpoint_metric and self.tcfg.checkpoint_metric not in metrics:
            metrics[self.tcfg.checkpoint_metric] = history[-1].get(self.tcfg.checkpoint_metric, 0.0) \
                if history else 0.0
        self.emit(model, history, metrics, curve, checkpoints.name_for(partial, None),
                  dict(optimizer=optimizer, schedule=schedule, partial=partial))

    def window(self, model: SessionModel, record: dict, history: list[dict]) -> None:
        """The end of a window: its record joins the history and is reported with the weights."""
        curve = record.pop("curve")
        history.append(record)
        metrics = {k: v for k, v in record.items() if isinstance(v, (int, float)) and v is not None}
        if self.session.rank == 0:
            say(f"[rayrec] day {record['train_day']}: loss {record['train_loss']:.3f}, "
                f"{record['sequences_per_s']:.0f} seq/s"
                + (f", day {record['eval_day']} recall@20 {record['recall@20']:.3f} "
                   f"ndcg@20 {record['ndcg@20']:.3f}" if record.get("eval_day") is not None else ""))
        self.emit(model, history, metrics, curve, checkpoints.name_for(None, record))

    def emit(self, model: SessionModel, history: list[dict], metrics: dict, curve: list, name: str,
             train_state: dict | None = None) -> None:
        """Every rank reports `metrics`; rank 0 attaches the loss curve and the checkpoint:
        weights, the history of finished windows and, inside a window, `train_state`."""
        if self.session.rank != 0:
            self.session.report(metrics, None)
            return
        directory = self.session.checkpoint_dir(name)
        checkpoints.save(directory, model, history, self.spec.item_col, **(train_state or {}))
        self.session.report(dict(metrics, curve=curve), directory)


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
        say(f"[rayrec] WARNING: model replicas differ across ranks: {[d[:12] for d, _ in gathered]}")
    return {"replicas_in_sync": int(in_sync), "nodes": len({n for _, n in gathered})}


def all_reduce_sums(sums: dict[str, float]) -> dict[str, float]:
    if not (dist.is_available() and dist.is_initialized()):
        return sums
    keys = sorted(sums)
    t = torch.tensor([sums[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))
