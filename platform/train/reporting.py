"""What the workers tell the driver: metrics, the loss curve and checkpoints, plus the
collectives that make those numbers whole (metric sums, the replica check).

Every rank reports at the same points (Ray Train needs all of them); rank 0 attaches the
checkpoint and the loss curve. In-process runs (`--workers 0`) have no Ray controller to
run callbacks, so the driver's tracker is handed to the loop and called here.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import ray.train
import torch
import torch.distributed as dist

from rayrec.models.checkpoint import save_model
from rayrec.models.session_model import SessionModel
from rayrec.train.spec import RunSpec
from rayrec.train.progress import say
from rayrec.train.state import save_train_state

PROGRESS = "progress.json"


class Reporter:
    def __init__(self, spec: RunSpec, rank: int, tracker=None):
        self.spec, self.rank, self.tcfg, self.tracker = spec, rank, spec.train, tracker
        self.local = spec.train.workers == 0  # Ray keeps no copy: the newest scratch directory is the checkpoint
        self.last: str | None = None

    def partial(self, model: SessionModel, history: list[dict], partial: dict, optimizer, schedule) -> None:
        """A checkpoint inside a window: weights, optimizer, schedule and the position
        (window, epoch, batch). Its score for keeping the best is the last finished
        window's (0 before any)."""
        curve = partial.pop("curve")
        metrics = {"train_day": partial["window"], "epochs_done": partial["epochs_done"],
                   "micro_done": partial["micro_done"], "global_step": partial["global_step"]}
        if self.tcfg.checkpoint_metric:
            metrics[self.tcfg.checkpoint_metric] = history[-1].get(self.tcfg.checkpoint_metric, 0.0) \
                if history else 0.0
        name = f"day-{partial['window']:03d}-epoch-{partial['epochs_done']:03d}-batch-{partial['micro_done']:06d}"
        self.emit(model, history, metrics, curve, name, lambda d: save_train_state(d, optimizer, schedule, partial))

    def window(self, model: SessionModel, record: dict, history: list[dict]) -> None:
        """The end of a window: its record joins the history and is reported with the weights."""
        curve = record.pop("curve")
        history.append(record)
        metrics = {k: v for k, v in record.items() if isinstance(v, (int, float)) and v is not None}
        if self.rank == 0:
            say(f"[rayrec] day {record['train_day']}: loss {record['train_loss']:.3f}, "
                f"{record['sequences_per_s']:.0f} seq/s"
                + (f", day {record['eval_day']} recall@20 {record['recall@20']:.3f} "
                   f"ndcg@20 {record['ndcg@20']:.3f}" if record.get("eval_day") is not None else ""))
        self.emit(model, history, metrics, curve, f"day-{record['train_day']:03d}")

    def emit(self, model: SessionModel, history: list[dict], metrics: dict, curve: list, name: str,
             write_more=None) -> None:
        """Every rank reports `metrics`; rank 0 attaches the loss curve and the checkpoint:
        weights, the history of finished windows and whatever `write_more(directory)` adds."""
        if self.rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        directory = os.path.join(self.spec.scratch, name)
        save_model(model, directory, extra={"item_col": self.spec.item_col})
        if write_more is not None:
            write_more(directory)
        with open(os.path.join(directory, PROGRESS + ".tmp"), "w") as f:  # written last, renamed into place:
            json.dump({"history": history}, f, indent=2)                    # its presence marks a whole checkpoint
        os.replace(os.path.join(directory, PROGRESS + ".tmp"), os.path.join(directory, PROGRESS))
        metrics = dict(metrics, curve=curve)
        checkpoint = ray.train.Checkpoint.from_directory(directory)
        if self.local:
            ray.train.report(metrics, checkpoint=checkpoint)
            if self.last and self.last != directory:
                shutil.rmtree(self.last, ignore_errors=True)
            self.last = directory
        else:
            # Synchronous: the report returns once Ray's controller has collected it (it polls
            # every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, which rayrec sets to 0.25 s). Uploading
            # asynchronously returns at once, but reports made faster than the controller
            # collects them pile up (each holding a checkpoint on local disk), and a worker
            # lost mid-backlog leaves every persisted but unregistered one behind in storage.
            ray.train.report(metrics, checkpoint=checkpoint, delete_local_checkpoint_after_upload=True)
        if self.tracker is not None:
            self.tracker.log(metrics)


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
