"""Run a training run, given as a RunSpec: on a Ray Train worker group, or in the caller's
own process (`workers: 0`). What the run's directory holds is trainer.py's business; this
module only runs the loop and hands back its history and final checkpoint, so that a Tune
trial, the CLI and a benchmark build and run a training run the same way.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading

from rayrec.raylocal import init_ray
from rayrec.train import checkpoints
from rayrec.train.config import TrainConfig
from rayrec.train.session import Listener
from rayrec.train.spec import RunSpec


class InProcess:
    """`workers: 0`: the loop in the caller's process, its checkpoints in `spec.scratch`
    (a later call with the same scratch resumes from the newest)."""

    @staticmethod
    def scratch(tmp: str, checkpoints: str | None) -> str:
        return os.path.join(checkpoints, "in-process") if checkpoints else os.path.join(tmp, "scratch")

    @staticmethod
    def fit(spec: RunSpec, storage: str, name: str, dest: str, listeners: list[Listener], callbacks: list,
            address: str | None) -> None:
        from rayrec.train.loop import run_in_process

        with own_signals():
            manager = run_in_process(spec, listeners)
        shutil.copytree(manager.latest(), dest)

    @staticmethod
    def latest(spec: RunSpec, storage: str, name: str, dest: str) -> str | None:
        return checkpoints.copy_latest(os.path.dirname(spec.scratch), os.path.basename(spec.scratch), dest,
                                       prefix=checkpoints.CheckpointManager.PREFIX)


class OnRayTrain:
    """`workers: N`: a Ray Train worker group; Ray keeps the checkpoints in `storage`/`name`,
    and a run started again with the same two resumes from the newest. Reports reach the
    caller through Ray Train callbacks (its controller's), not listeners."""

    @staticmethod
    def scratch(tmp: str, checkpoints: str | None) -> str:
        return os.path.join(tmp, "scratch")

    @staticmethod
    def fit(spec: RunSpec, storage: str, name: str, dest: str, listeners: list[Listener], callbacks: list,
            address: str | None) -> None:
        trainer = build_trainer(spec, storage, name, callbacks)
        init_ray(address)   # with rayrec's runtime_env (raylocal.py): Train's controller and workers read it
        with own_signals():
            result = trainer.fit()
        if result.error is not None:
            raise result.error
        if result.checkpoint is None:
            raise RuntimeError("training finished without a checkpoint")
        with result.checkpoint.as_directory() as d:
            shutil.copytree(d, dest)

    @staticmethod
    def latest(spec: RunSpec, storage: str, name: str, dest: str) -> str | None:
        return checkpoints.copy_latest(storage, name, dest)


def runner(tcfg: TrainConfig) -> type[InProcess] | type[OnRayTrain]:
    """Where a run's loop runs: the one place that looks at `train.workers` to decide."""
    return OnRayTrain if tcfg.workers > 0 else InProcess


def fit(spec: RunSpec, storage: str, name: str, dest: str, listeners: list[Listener] = (),
        callbacks: list = (), address: str | None = None) -> list[dict]:
    """Train; copy the final checkpoint to local `dest` and return the per-window history.
    `listeners` get every report of an in-process run; `callbacks` are Ray Train callbacks
    of a run with workers (which report through Ray Train's controller)."""
    runner(spec.train).fit(spec, storage, name, dest, list(listeners), list(callbacks), address)
    return checkpoints.history(dest)


def latest_checkpoint(spec: RunSpec, storage: str, name: str, dest: str) -> str | None:
    """After a run stopped: copy its newest whole checkpoint to `dest`; where it stands,
    or None when it saved none."""
    return runner(spec.train).latest(spec, storage, name, dest)


def build_trainer(spec: RunSpec, storage: str, name: str, callbacks: list = ()):
    """The TorchTrainer of a run with workers."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from rayrec.threads import wait_env
    from rayrec.train.loop import train_loop_per_worker

    tcfg = spec.train
    return TorchTrainer(
        train_loop_per_worker, train_loop_config={"spec": spec.to_json()},
        scaling_config=scaling(tcfg),
        torch_config=TorchConfig(backend="nccl" if tcfg.use_gpu else "gloo"),
        run_config=RunConfig(name=name, storage_path=storage,
                             failure_config=FailureConfig(max_failures=tcfg.max_failures),
                             checkpoint_config=CheckpointConfig(
                                 num_to_keep=tcfg.keep_checkpoints,
                                 checkpoint_score_attribute=tcfg.checkpoint_metric,
                                 checkpoint_score_order="max"),
                             callbacks=list(callbacks) or None,
                             # the OpenMP wait policy must be in a worker's environment before torch loads
                             worker_runtime_env={"env_vars": wait_env(tcfg.omp_wait)},
                             logging_config=LoggingConfig(log_level="WARNING")),
    )


def scaling(tcfg: TrainConfig):
    from ray.train import ScalingConfig

    # `auto` reserves one CPU per worker, so that any cluster can place the group; each
    # worker then takes its share of its node's cores (loop.worker_threads)
    cpus = 1 if tcfg.threads_per_worker == "auto" else tcfg.threads_per_worker
    resources = {"CPU": cpus} | ({"GPU": 1} if tcfg.use_gpu else {})
    return ScalingConfig(num_workers=tcfg.workers, use_gpu=tcfg.use_gpu, resources_per_worker=resources,
                         placement_strategy="SPREAD" if tcfg.placement == "spread" else "PACK")


@contextlib.contextmanager
def own_signals():
    """A SIGTERM (`rayrec jobs stop`, `ray job stop`, a pod's termination) stops the run as
    Ctrl-C does: it goes to whatever handles SIGINT at that moment (Ray Train's abort
    during a fit, else Python's KeyboardInterrupt), so the last checkpoint and
    stopped.json are kept. Ray Train installs its SIGINT handler on every fit and leaves it
    installed; ours are put back afterwards so a later Ctrl-C is a KeyboardInterrupt again."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def on_term(signum, frame):
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        for s, handler in before.items():
            if handler is not None:
                signal.signal(s, handler)

