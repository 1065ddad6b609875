"""Where the training loop runs: a Ray Train worker, or the caller's own process.

The loop asks its session what differs between the two, and nothing else: its rank and
world size (which shard of the data it reads), its device and precision, how to prepare
the model (DDP or not), the checkpoint to start from, where to write a checkpoint, where
to send a report, and the other ranks' values of a small record. Under Ray Train these are
Ray's (its context, its persisted checkpoints, `ray.train.report`). In-process (`--workers
0`, a Tune trial's own process) there is no worker group and no Ray Train controller: the
CheckpointManager keeps the checkpoints and the listeners (the tracker, a Tune trial's
reporter) get each report directly. That skips Train's local mode, which starts nothing
but still costs a second per run, and holds no placement group that a stopped trial
could leak.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Protocol

import torch

from rayrec.train.checkpoints import CheckpointManager
from rayrec.train.config import TrainConfig
from rayrec.train.optim import precision


class Listener(Protocol):
    def log(self, metrics: dict) -> None: ...


class RaySession:
    """A Ray Train worker: rank 0 writes each checkpoint in `scratch`, then Ray persists it."""

    def __init__(self, scratch: str, tcfg: TrainConfig):
        import ray
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world, self.scratch = ctx.get_world_rank(), ctx.get_world_size(), scratch
        self.node = ray.get_runtime_context().get_node_id()
        self.device = ray.train.torch.get_device() if tcfg.use_gpu else torch.device("cpu")
        self.precision = precision(tcfg, self.device, worker_group=True)
        self.where = f"on {self.world} Ray Train worker(s) x"

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """DDP over the worker group (parameters excluded from DDP stay out of it)."""
        import ray.train.torch

        return ray.train.torch.prepare_model(model) if self.world > 1 else model.to(self.device)

    def gather(self, value: dict) -> list[dict]:
        """Every rank's `value`, in rank order (JSON-able dicts; a collective: all ranks call it)."""
        import torch.distributed as dist

        if self.world == 1 or not dist.is_initialized():
            return [value]
        out: list = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    @contextlib.contextmanager
    def restored(self) -> Iterator[str | None]:
        """After a worker-group restart (or over an earlier run's storage): its last checkpoint."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as d:
            yield d

    def checkpoint_dir(self, name: str) -> str:
        return os.path.join(self.scratch, name)

    def report(self, metrics: dict, directory: str | None) -> None:
        import ray.train

        if directory is None:
            ray.train.report(metrics, checkpoint=None)
            return
        # Synchronous: the report returns once Ray's controller has collected it (it polls
        # every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, which rayrec sets to 0.25 s). Uploading
        # asynchronously returns at once, but reports made faster than the controller
        # collects them pile up (each holding a checkpoint on local disk), and a worker
        # lost mid-backlog leaves every persisted but unregistered one behind in storage.
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory),
                         delete_local_checkpoint_after_upload=True)


class LocalSession:
    """The caller's process: rank 0 of 1, checkpoints kept by a CheckpointManager whose
    folder may hold an earlier attempt's (then the loop resumes from its newest)."""

    rank, world, node, where = 0, 1, "in-process", "in-process on"

    def __init__(self, manager: CheckpointManager, tcfg: TrainConfig, listeners: list[Listener] = ()):
        self.manager, self.listeners = manager, list(listeners)
        self.device = torch.device("cuda" if tcfg.use_gpu else "cpu")
        self.precision = precision(tcfg, self.device)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def gather(self, value: dict) -> list[dict]:
        return [value]

    @contextlib.contextmanager
    def restored(self) -> Iterator[str | None]:
        yield self.manager.latest()

    def checkpoint_dir(self, name: str) -> str:
        return self.manager.directory(name)

    def report(self, metrics: dict, directory: str | None) -> None:
        if directory is not None:
            self.manager.saved(directory, metrics)
        for listener in self.listeners:
            listener.log(metrics)
