"""rayrec's C kernels (softmax_rows.c, dropout.c, gru.c): built on first use, loaded by ctypes,
and run on torch's own OpenMP threads.

Eager torch leaves some of a CPU step's passes without a fused kernel: the loss's softmax
over bf16 logits, dropout, whose mask it draws and applies in separate passes, and a GRU
step's gates (ten small ops per time step). Those are small loops in C here, with no
Python or torch headers.

The library is compiled with the machine's C compiler (`-march=native`, so it is cached
per CPU as well as per source) into ~/.cache/rayrec/kernels, and published by an atomic
rename so that concurrent workers never load a half-written file. It links OpenMP by the
name torch's runtime already loaded (libgomp.so.1), so its loops share torch's thread pool:
a second pool of threads measured slower, competing with torch's spinning workers.
Without a compiler, or with RAYREC_NATIVE_KERNELS=0, every caller keeps its torch path;
both paths are tested.
Nothing is loaded but the file this module compiled from its own sources.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = tuple(os.path.join(HERE, name) for name in ("softmax_rows.c", "dropout.c", "gru.c"))
HEADERS = tuple(os.path.join(HERE, name) for name in ("bf16.h", "expf.h"))
FLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fPIC", "-shared")


def enabled() -> bool:
    return os.environ.get("RAYREC_NATIVE_KERNELS", "1") != "0" and library() is not None


def cache_dir() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "rayrec", "kernels")


def _cpu() -> str:
    """What -march=native depends on: the CPU's model and feature flags."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags", "Features"))]
        return platform.machine() + "".join(sorted(set(lines)))
    except OSError:
        return platform.machine() + platform.processor()


@functools.cache
def library() -> ctypes.CDLL | None:
    """The kernels for this machine, built on first use; None without a working compiler."""
    path = build(FLAGS)
    return load(path) if path else None


def build(flags: tuple[str, ...]) -> str | None:
    """The compiled library's path in the cache (compiled now if it is not there)."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None or not all(os.path.exists(s) for s in SOURCES + HEADERS):
        return None
    key = hashlib.sha256(_cpu().encode() + compiler.encode() + " ".join(flags).encode())
    for source in SOURCES + HEADERS:
        with open(source, "rb") as f:
            key.update(f.read())
    path = os.path.join(cache_dir(), f"rayrec-kernels-{key.hexdigest()[:16]}.so")
    if os.path.exists(path):
        return path
    tmp = None
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(path))
        os.close(fd)
        done = subprocess.run([compiler, *flags, *SOURCES, "-o", tmp, "-lm"], capture_output=True, timeout=120)
        if done.returncode == 0:
            os.replace(tmp, path)   # published whole: a concurrent worker loads either nothing or all of it
            return path
    except (OSError, subprocess.SubprocessError):
        pass
    if tmp and os.path.exists(tmp):
        os.unlink(tmp)
    return None


def load(path: str) -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL(path)
    except OSError:
        return None
    i64, i32, u32, u64, f32, ptr = (ctypes.c_int64, ctypes.c_int32, ctypes.c_uint32, ctypes.c_uint64,
                                    ctypes.c_float, ctypes.c_void_p)
    lib.softmax_rows_forward.argtypes = [i64, ptr, i32, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr, i32]
    lib.softmax_rows_backward.argtypes = [i64, ptr, i32, i64, i64, ptr, ptr, f32, f32, f32, ptr, i64, i32]
    lib.dropout_apply.argtypes = [i64, ptr, ptr, i32, u64, u32, f32, i32]
    lib.sample_rows.argtypes = [i64, ptr, i32, i64, i64, ptr, ptr, i32]
    lib.gru_step_forward.argtypes = [i64, i64, ptr, ptr, ptr, ptr, ptr, i32]
    lib.gru_step_backward.argtypes = [i64, i64, ptr, ptr, ptr, ptr, ptr, ptr, ptr, i32]
    for fn in (lib.softmax_rows_forward, lib.softmax_rows_backward, lib.sample_rows, lib.dropout_apply,
               lib.gru_step_forward, lib.gru_step_backward):
        fn.restype = None
    return lib

