"""Atomic directory outputs, on a local disk or an object store.

A stage's output must never look complete before it is. Locally a stage writes into a
temporary sibling and renames it into place. Object stores have no rename, so there a
stage writes under the output prefix (intermediate files under its `_tmp/`) and publishes
by writing a manifest, `_rayrec_complete.json`, last: readers trust only a prefix that
holds one. A failed write removes what it wrote; an overwrite removes the old manifest
first, so a half-replaced output never looks whole either.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import uuid

from rayrec.storage import Location, display, is_uri, locate, parent_and_name

MANIFEST = "_rayrec_complete.json"


def _local(path: str) -> str | None:
    """The local path of `path` (a path or file:// URI), or None for a remote URI."""
    loc = locate(path) if path.startswith("file://") else None
    return loc.path if loc else (None if is_uri(path) else os.path.abspath(path))


@contextlib.contextmanager
def atomic_directory(path: str, overwrite: bool = False):
    """Yield a temporary local directory that becomes `path` only if the block succeeds."""
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


def _check_replaceable(loc: Location, overwrite: bool) -> None:
    names = loc.names()
    if names and not overwrite:
        state = "holds a complete output" if MANIFEST in names else \
            f"holds files but no {MANIFEST} (an interrupted write?)"
        raise FileExistsError(f"{display(loc.uri)} {state}; pass --overwrite to replace it")


def _publish(loc: Location, started: float) -> None:
    files = [{"path": i.path[len(loc.path) + 1:], "size": i.size} for i in loc.list(recursive=True)
             if i.type.name == "File" and i.base_name != MANIFEST]
    loc.child(MANIFEST).write_json({"format_version": 1, "written_at": time.time(),
                                    "seconds": round(time.time() - started, 3), "files": files})


def _unpublish(loc: Location) -> None:
    loc.child(MANIFEST).delete()   # first: from here on readers see no complete output
    loc.delete()


@contextlib.contextmanager
def output_location(uri: str, overwrite: bool = False):
    """Where a stage whose workers write in parallel puts its output directory (a
    Location). Locally a temporary sibling renamed into place; on an object store the
    prefix itself, published by the manifest."""
    local = _local(uri)
    if local is not None:
        with atomic_directory(local, overwrite) as tmp:
            yield locate(tmp)
        return
    loc = locate(uri)
    _check_replaceable(loc, overwrite)
    started = time.time()
    _unpublish(loc)
    try:
        yield loc
    except BaseException:
        loc.delete()
        raise
    _publish(loc, started)


@contextlib.contextmanager
def staged_output(uri: str, overwrite: bool = False):
    """A local temporary directory that becomes `uri` if the block succeeds: renamed into
    place locally, uploaded and published on an object store. For outputs one process
    writes (a run directory)."""
    local = _local(uri)
    if local is not None:
        with atomic_directory(local, overwrite) as tmp:
            yield tmp
        return
    loc = locate(uri)
    _check_replaceable(loc, overwrite)
    tmp = tempfile.mkdtemp(prefix="rayrec-out-")
    try:
        yield tmp
        started = time.time()
        _unpublish(loc)
        try:
            loc.upload(tmp)
        except BaseException:
            loc.delete()
            raise
        _publish(loc, started)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def is_complete(uri: str) -> bool:
    """Whether `uri` holds a published output: a local directory (only ever renamed
    into place whole) or a prefix with its manifest."""
    local = _local(uri)
    if local is not None:
        return os.path.isdir(local) and bool(os.listdir(local))
    return locate(uri).child(MANIFEST).is_file()


def require_complete(uri: str, what: str) -> Location:
    """The Location of a published output (or of a directory inside one), or an error
    saying why it is not one."""
    loc = locate(uri)
    if not loc.is_dir():
        raise FileNotFoundError(f"{display(uri)}: no such {what}")
    if not loc.local and not loc.child(MANIFEST).is_file() and \
            not locate(parent_and_name(uri)[0]).child(MANIFEST).is_file():   # a part of a published output
        raise FileNotFoundError(f"{display(uri)}: not a complete {what} (no {MANIFEST}: still being written, or "
                                "an interrupted write; re-run it with --overwrite)")
    return loc


@contextlib.contextmanager
def local_copy(uri: str, what: str):
    """A local directory holding a published output: the directory itself when local, a
    downloaded temporary copy (removed afterwards) for a URI."""
    loc = require_complete(uri, what)
    if loc.local:
        yield loc.path
        return
    tmp = tempfile.mkdtemp(prefix="rayrec-in-")
    try:
        yield loc.download(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_versioned_json(path: str, version: int, what: str) -> dict:
    """Read an artifact's JSON metadata (a path or URI), refusing a missing file or another
    format version."""
    loc = locate(path)
    if not loc.is_file():
        parent, name = parent_and_name(path)
        raise FileNotFoundError(f"{display(parent)}: not a {what} (no {name})")
    meta = loc.read_json()
    if meta.get("format_version") != version:
        raise ValueError(f"{display(path)}: format_version {meta.get('format_version')} is not {version}")
    return meta
