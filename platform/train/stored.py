"""The checkpoints Ray Train persisted, read back from its storage (a path or any
pyarrow/fsspec URI) when a run stops before Ray hands over a result."""
from __future__ import annotations

import json
import os

import pyarrow.fs as pafs

from rayrec.train.reporting import PROGRESS
from rayrec.train.state import META, TENSORS, position_text

REQUIRED = ("model.json", "model.safetensors", PROGRESS)


def _filesystem(storage: str) -> tuple[pafs.FileSystem, str]:
    if "://" in storage:
        return pafs.FileSystem.from_uri(storage)
    return pafs.LocalFileSystem(), os.path.abspath(storage)


def complete_checkpoints(storage: str, name: str, prefix: str = "checkpoint_") -> list[str]:
    """Checkpoint directories under `storage`/`name` (named `prefix`...) holding every
    file a restore reads, oldest first (Ray names them by time). One that Ray was still
    copying when the run stopped lacks files and is skipped."""
    fs, root = _filesystem(storage)
    base = f"{root.rstrip('/')}/{name}".rstrip("/")
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        return []
    dirs = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(base)) if i.type == pafs.FileType.Directory
                  and i.base_name.startswith(prefix))
    complete = []
    for d in dirs:
        names = {i.base_name for i in fs.get_file_info(pafs.FileSelector(d))}
        if set(REQUIRED) <= names and (META not in names or TENSORS in names):
            complete.append(d)
    return complete


def copy_latest_checkpoint(storage: str, name: str, dest: str, prefix: str = "checkpoint_") -> str | None:
    """Copy the newest complete checkpoint to local `dest`; say where it stands
    ("after day 2" or "day 3, epoch 1, batch 40"), or None when there is none."""
    found = complete_checkpoints(storage, name, prefix)
    if not found:
        return None
    fs, _ = _filesystem(storage)
    os.makedirs(dest, exist_ok=True)
    pafs.copy_files(found[-1], dest, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    with open(os.path.join(dest, PROGRESS)) as f:
        history = json.load(f)["history"]
    if os.path.exists(os.path.join(dest, META)):
        with open(os.path.join(dest, META)) as f:
            p = json.load(f)["partial"]
        return position_text(p)
    return f"after day {history[-1]['train_day']}" if history else "before the first day"
