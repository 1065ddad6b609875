"""The run directory: the contract between the stages, and the one place its names live.

`rayrec train` writes a run directory; evaluate, serve, the Triton export, tune and a
pipeline read it. It sits in this low floor so that both sides use it without importing
each other (serve never imports the trainer):

    RUN/checkpoint/           the model (models/checkpoint.py: model.json + model.safetensors)
                              and its training state (train/checkpoints.py: progress.json ...)
    RUN/metrics.json          a finished run's metrics, written last: its presence means complete
    RUN/metrics.csv|png       the same per day, as a table and a plot
    RUN/tensorboard/          TensorBoard event files (train.tensorboard)
    RUN/stopped.json          a run that ended early: its configs, why, and where it stood
    RUN/workflow/             the fitted ETL workflow the run's data was encoded with
    RUN/schema.json|pbtxt     the dataset's schema (schema.py owns the format)

A dataset (the ETL's output) keeps its fitted workflow under the same name (`workflow_of`).
Every path may be local or a storage URI; readers go through `storage.locate`.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from rayrec.storage import display, join, locate

CHECKPOINT, METRICS, STOPPED, WORKFLOW = "checkpoint", "metrics.json", "stopped.json", "workflow"
PROGRESS = "progress.json"   # inside checkpoint/: the finished windows (train/checkpoints.py writes it)
MODEL_WEIGHTS, MODEL_META = "model.safetensors", "model.json"   # inside checkpoint/ (models/checkpoint.py)
CSV, PLOT = "metrics.csv", "metrics.png"   # beside metrics.json
TENSORBOARD = "tensorboard"                 # train.tensorboard's event files


def workflow_of(dataset_dir: str) -> str:
    """A dataset's (or a run's) fitted workflow directory."""
    return join(dataset_dir, WORKFLOW)


@dataclass(frozen=True)
class RunDir:
    path: str   # a local path or a storage URI

    def child(self, *parts: str) -> str:
        return join(self.path, *parts)

    @property
    def checkpoint(self) -> str:
        return self.child(CHECKPOINT)

    @property
    def workflow(self) -> str:
        return self.child(WORKFLOW)

    @property
    def metrics_path(self) -> str:
        return self.child(METRICS)

    @property
    def stopped_path(self) -> str:
        return self.child(STOPPED)

    @property
    def tensorboard(self) -> str:
        return self.child(TENSORBOARD)

    @property
    def csv_path(self) -> str:
        return self.child(CSV)

    @property
    def plot_path(self) -> str:
        return self.child(PLOT)

    def sidecars(self) -> list[str]:
        """metrics.json and the files written beside it (CSV, plot)."""
        return [self.metrics_path, self.csv_path, self.plot_path]

    @property
    def complete(self) -> bool:
        """A finished run: its metrics (written last) and its model are there."""
        return locate(self.metrics_path).is_file() and locate(self.child(CHECKPOINT, MODEL_WEIGHTS)).is_file()

    @property
    def has_model(self) -> bool:
        return locate(self.child(CHECKPOINT, MODEL_META)).is_file()

    def metrics(self) -> dict:
        loc = locate(self.metrics_path)
        if not loc.is_file():
            state = " (it stopped early: see stopped.json)" if self.stopped() is not None else ""
            raise FileNotFoundError(f"{display(self.path)}: no {METRICS}; not a finished rayrec run{state}")
        return loc.read_json()

    def stopped(self) -> dict | None:
        loc = locate(self.stopped_path)
        return loc.read_json() if loc.is_file() else None

    def history(self) -> list[dict]:
        """The finished windows recorded in the checkpoint ([] when it has none)."""
        loc = locate(self.child(CHECKPOINT, PROGRESS))
        if not loc.is_file():
            return []
        return loc.read_json().get("history") or []

    def version(self) -> str:
        """`RUN:days A-B:DIGEST`: the run's name, the days its model last trained on, and the
        start of the weights' SHA-256, so two runs of one name never share a version."""
        days = ""
        try:
            history = self.history()
            window = history[-1].get("window") if history else None
            days = f"days {window[0]}-{window[-1]}" if window else ""
        except (OSError, ValueError, AttributeError, IndexError, TypeError):
            pass
        digest = hashlib.sha256()
        with open(self.child(CHECKPOINT, MODEL_WEIGHTS), "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        name = os.path.basename(os.path.normpath(self.path))
        return ":".join(p for p in (name, days, digest.hexdigest()[:12]) if p)


def newest_run(directory: str) -> str | None:
    """The newest complete run published in local `directory` (by its metrics.json's time)."""
    found = []
    try:
        names = os.listdir(directory)
    except OSError:
        return None
    for name in names:
        if name.startswith("."):      # a run still being written (published by a rename)
            continue
        run = RunDir(os.path.join(directory, name))
        if run.complete:
            found.append((os.path.getmtime(run.metrics_path), name))
    return os.path.join(directory, max(found)[1]) if found else None
