"""The one owner of a training checkpoint: what it holds, how it is written and read back,
where a resumed run stands, and which checkpoints an in-process run keeps.

A checkpoint directory holds the model files (model.json + model.safetensors, owned by
models/checkpoint.py), `progress.json` (the history of finished windows) and, inside a
window, the optimizer and schedule state with the position (epoch, batch). progress.json
is written last and renamed into place, so its presence marks a whole checkpoint: a
directory that a stopped run, or Ray's upload, left half-written is never read.

No pickle: torch.save would pickle the optimizer's state dict, and a checkpoint is loaded on
restart and by `--resume`, so it holds tensors (safetensors) and plain JSON only. AdamW's
state is the same on every DDP rank, so rank 0's copy restores them all. The random stream
needs no saved state: every batch reseeds from (seed, window, epoch, batch, rank).

Ray Train keeps the checkpoints of a run with workers (its storage, `num_to_keep`);
`CheckpointManager` does the same for a run in the caller's own process, with the same
retention rule, in a folder that outlives the process, so a run started again over the
same folder (a Tune trial after its driver was killed) resumes from it.
"""
from __future__ import annotations

import json
import os
import re
import shutil

import pyarrow.fs as pafs
import torch
from safetensors.torch import load_file, save_file

from rayrec.models.checkpoint import load_weights, save_model
from rayrec.rundir import MODEL_META, MODEL_WEIGHTS, PROGRESS

TENSORS, META = "optimizer.safetensors", "train_state.json"
REQUIRED = (MODEL_META, MODEL_WEIGHTS, PROGRESS)


def save(directory: str, model: torch.nn.Module, history: list[dict], item_col: str,
         optimizer: torch.optim.Optimizer | None = None, schedule=None, partial: dict | None = None) -> None:
    """Write a whole checkpoint; with `partial` (a position inside a window) also the
    optimizer and schedule state."""
    save_model(model, directory, extra={"item_col": item_col})
    if partial is not None:
        _save_train_state(directory, optimizer, schedule, partial)
    tmp = os.path.join(directory, PROGRESS + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"history": history}, f, indent=2)
    os.replace(tmp, os.path.join(directory, PROGRESS))


def load(model: torch.nn.Module, directory: str) -> tuple[list[dict], dict | None]:
    """Weights into `model`; the history of finished windows and, for a checkpoint inside
    a window, the optimizer and schedule state with the position (else None)."""
    load_weights(model, directory)
    return history(directory), _read_train_state(directory)


def history(directory: str) -> list[dict]:
    with open(os.path.join(directory, PROGRESS)) as f:
        return json.load(f)["history"]


def _save_train_state(directory: str, optimizer: torch.optim.Optimizer, schedule, partial: dict) -> None:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    save_file(tensors, os.path.join(directory, TENSORS))
    meta = {"param_groups": sd["param_groups"], "scalars": scalars, "schedule": schedule.state_dict(),
            "partial": partial}
    with open(os.path.join(directory, META), "w") as f:
        json.dump(meta, f)


def _read_train_state(directory: str) -> dict | None:
    if not os.path.exists(os.path.join(directory, META)):
        return None
    with open(os.path.join(directory, META)) as f:
        meta = json.load(f)
    return {**meta, "tensors": load_file(os.path.join(directory, TENSORS))}


def apply_train_state(state: dict, optimizer: torch.optim.Optimizer, schedule) -> None:
    per_param: dict[int, dict] = {}
    for name, value in {**state["tensors"], **state["scalars"]}.items():
        index, key = name.split(".", 1)
        per_param.setdefault(int(index), {})[key] = value
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in state["param_groups"]]
    optimizer.load_state_dict({"state": per_param, "param_groups": groups})
    schedule.load_state_dict(state["schedule"])


def position_text(partial: dict) -> str:
    """Where a checkpoint inside a window resumes, for messages and stopped.json."""
    return f"day {partial['window']}, epoch {partial['epochs_done'] + 1}, batch {partial.get('micro_done', 0) + 1}"


def describe(directory: str) -> str:
    """Where a checkpoint stands: "after day 2", "day 3, epoch 1, batch 40"."""
    if os.path.exists(os.path.join(directory, META)):
        with open(os.path.join(directory, META)) as f:
            return position_text(json.load(f)["partial"])
    done = history(directory)
    return f"after day {done[-1]['train_day']}" if done else "before the first day"


def name_for(partial: dict | None, record: dict | None) -> str:
    """A checkpoint's name says where it stands (a window's end, or a batch inside one)."""
    if partial is not None:
        return (f"day-{partial['window']:03d}-epoch-{partial['epochs_done']:03d}-"
                f"batch-{partial['micro_done']:06d}")
    return f"day-{record['train_day']:03d}"


# --- checkpoints in storage (Ray Train's, or an in-process run's folder) -----------------

def _filesystem(storage: str) -> tuple[pafs.FileSystem, str]:
    if "://" in storage:
        return pafs.FileSystem.from_uri(storage)
    return pafs.LocalFileSystem(), os.path.abspath(storage)


def complete(storage: str, name: str, prefix: str = "checkpoint_") -> list[str]:
    """Checkpoint directories under `storage`/`name` (named `prefix`...) holding every
    file a restore reads, oldest first (Ray names them by time, CheckpointManager by a
    sequence number). One still being written when the run stopped is skipped."""
    fs, root = _filesystem(storage)
    base = f"{root.rstrip('/')}/{name}".rstrip("/")
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        return []
    dirs = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(base)) if i.type == pafs.FileType.Directory
                  and i.base_name.startswith(prefix))
    found = []
    for d in dirs:
        names = {i.base_name for i in fs.get_file_info(pafs.FileSelector(d))}
        if set(REQUIRED) <= names and (META not in names or TENSORS in names):
            found.append(d)
    return found


def copy_latest(storage: str, name: str, dest: str, prefix: str = "checkpoint_") -> str | None:
    """Copy the newest complete checkpoint to local `dest` and say where it stands, or
    None when there is none."""
    found = complete(storage, name, prefix)
    if not found:
        return None
    fs, _ = _filesystem(storage)
    os.makedirs(dest, exist_ok=True)
    pafs.copy_files(found[-1], dest, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return describe(dest)


class CheckpointManager:
    """The checkpoints of an in-process run in `folder`: each save gets the next sequence
    number; the newest is always kept and, of the rest, the `keep - 1` best by `metric`
    (the newest without one), as Ray Train's CheckpointConfig does for runs with workers."""

    PREFIX = "ckpt-"

    def __init__(self, folder: str, keep: int = 2, metric: str | None = None):
        self.folder, self.keep, self.metric = folder, keep, metric
        os.makedirs(folder, exist_ok=True)
        self.scores: dict[str, float] = {}
        found = self.found()
        self.next = 1 + max((self._sequence(d) for d in found), default=0)

    def found(self) -> list[str]:
        return complete(os.path.dirname(self.folder) or ".", os.path.basename(self.folder), self.PREFIX)

    def latest(self) -> str | None:
        """The newest whole checkpoint: where a run started again over this folder resumes."""
        found = self.found()
        return found[-1] if found else None

    def directory(self, name: str) -> str:
        path = os.path.join(self.folder, f"{self.PREFIX}{self.next:06d}-{name}")
        self.next += 1
        return path

    def saved(self, directory: str, metrics: dict) -> None:
        """`directory` is complete: apply the retention rule."""
        self.scores[directory] = float(metrics.get(self.metric, 0.0)) if self.metric else 0.0
        found = self.found()
        newest, older = found[-1], found[:-1]
        if self.metric:
            older.sort(key=lambda d: self.scores.get(d, float("-inf")))
        for d in older[:max(0, len(older) - (self.keep - 1))]:
            shutil.rmtree(d, ignore_errors=True)
            self.scores.pop(d, None)
        for d in os.listdir(self.folder):   # half-written ones from a run that was killed
            path = os.path.join(self.folder, d)
            if path != newest and path not in found and self._sequence(path) < self._sequence(newest):
                shutil.rmtree(path, ignore_errors=True)

    @classmethod
    def _sequence(cls, path: str) -> int:
        m = re.match(rf"{cls.PREFIX}(\d+)-", os.path.basename(path))
        return int(m.group(1)) if m else -1
