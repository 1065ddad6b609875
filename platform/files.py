"""Atomic directory output: a stage writes into a temporary sibling and renames it into place,
so an interrupted run never leaves a partial directory that looks complete."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid


@contextlib.contextmanager
def atomic_directory(path: str, overwrite: bool = False):
    """Yield a temporary directory that becomes `path` only if the block succeeds."""
    path = os.path.abspath(path)
    if os.path.exists(path) and os.listdir(path) and not overwrite:
        raise FileExistsError(f"{path} exists and is not empty; pass --overwrite to replace it")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.exists(path):
        old = tmp + ".old"
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def read_versioned_json(path: str, version: int, what: str) -> dict:
    """Read an artifact's JSON metadata, refusing a missing file or another format version."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{os.path.dirname(path)}: not a {what} (no {os.path.basename(path)})")
    with open(path) as f:
        meta = json.load(f)
    if meta.get("format_version") != version:
        raise ValueError(f"{path}: format_version {meta.get('format_version')} is not {version}")
    return meta
