"""The fused loss's row passes (bf16 or fp32 logits) in one C loop each (softmax_rows.c),
with torch's blockwise passes as the fallback.

Eager torch has no kernel that reads bf16 rows and makes their softmax statistics in fp32,
so the loss widened each block of logits, ran max, sub, exp and sum over it and narrowed it
back; in fp32 it still ran five passes (bias, max, sub, exp, sum) and the bias gradient's
column sums. The C loop does the same arithmetic reading and writing each row once: loss
forward + backward measured in BENCHMARKS.md (issue 16).

The library is compiled on first use with the machine's C compiler (`-march=native`, so it
is cached per CPU as well as per source) into ~/.cache/rayrec/kernels, and published by an
atomic rename so that concurrent workers never load a half-written file. Without a compiler,
or with RAYREC_NATIVE_KERNELS=0, losses.py keeps its torch passes; both paths are tested.
Nothing is loaded but the file this module compiled from its own source.
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
from concurrent.futures import ThreadPoolExecutor

import torch

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "softmax_rows.c")
FLAGS = ("-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-fPIC", "-shared")
MIN_ROWS_PER_THREAD = 16  # below this a thread's hand-off costs more than its rows
BIAS_CHUNK = 64  # rows per partial sum of the bias gradient


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
    if compiler is None or not os.path.exists(SOURCE):
        return None
    with open(SOURCE, "rb") as f:
        key = hashlib.sha256(f.read() + _cpu().encode() + compiler.encode() + " ".join(flags).encode())
    path = os.path.join(cache_dir(), f"softmax_rows-{key.hexdigest()[:16]}.so")
    if os.path.exists(path):
        return path
    tmp = None
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(path))
        os.close(fd)
        done = subprocess.run([compiler, *flags, SOURCE, "-o", tmp, "-lm"], capture_output=True, timeout=120)
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
    i64, i32, f32, ptr = ctypes.c_int64, ctypes.c_int32, ctypes.c_float, ctypes.c_void_p
    lib.softmax_rows_forward.argtypes = [i64, i64, ptr, i32, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr]
    lib.softmax_rows_backward.argtypes = [i64, i64, ptr, i32, i64, i64, ptr, ptr, f32, f32, f32, ptr]
    lib.softmax_rows_forward.restype = lib.softmax_rows_backward.restype = None
    return lib


@functools.cache
def _pool(threads: int, pid: int) -> ThreadPoolExecutor:
    """Per process: a forked child gets its own pool, not its parent's dead threads."""
    return ThreadPoolExecutor(threads, thread_name_prefix="rayrec-softmax")


def _split(n: int, chunk: int | None = None) -> list[tuple[int, int]]:
    """[0, n) in one range per torch thread, or in ranges of `chunk` rows (a split that does
    not depend on the thread count, for sums that must not either)."""
    parts = max(1, min(torch.get_num_threads(), n // MIN_ROWS_PER_THREAD)) if chunk is None else -(-n // chunk)
    bounds = [n * k // parts for k in range(parts + 1)] if chunk is None else [*range(0, n, chunk), n]
    return list(zip(bounds, bounds[1:])) or [(0, 0)]


def _run(fn, ranges: list[tuple[int, int]], *args, last=None) -> None:
    """fn(r0, r1, *args, last[k]) for each range k on torch's threads (ctypes drops the GIL
    while C runs); `last` is per range (None: None for all)."""
    tails = last if last is not None else [None] * len(ranges)
    threads = min(torch.get_num_threads(), len(ranges))
    if threads <= 1:
        for (a, b), t in zip(ranges, tails):
            fn(a, b, *args, t)
        return
    pool = _pool(threads, os.getpid())
    for f in [pool.submit(fn, a, b, *args, t) for (a, b), t in zip(ranges, tails)]:
        f.result()


def supports(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float32)


def _check(x: torch.Tensor, labels: torch.Tensor) -> None:
    if not supports(x) or x.dim() != 2 or x.stride(1) != 1:
        raise ValueError("softmax_rows: expected a CPU bf16 or fp32 [rows, columns] view with contiguous rows")
    if labels.dtype != torch.int64 or not labels.is_contiguous() or len(labels) != len(x):
        raise ValueError("softmax_rows: expected contiguous int64 labels, one per row")
    if len(labels) and not (0 <= int(labels.min()) and int(labels.max()) < x.shape[1]):  # C reads x[i, label]
        raise IndexError(f"softmax_rows: a label lies outside the {x.shape[1]} columns")


def forward(x: torch.Tensor, labels: torch.Tensor, with_total: bool, bias: torch.Tensor | None = None,
            lib: ctypes.CDLL | None = None):
    """x <- exp(x + bias - rowmax) in place; returns (logsumexp, 1 / sum, logit at the label,
    row sums of the logits or None), the logits being x + bias."""
    _check(x, labels)
    n, c = x.shape
    if bias is not None and (bias.dtype != torch.float32 or not bias.is_contiguous() or len(bias) != c):
        raise ValueError(f"softmax_rows: expected a contiguous fp32 bias of {c} columns")
    lse, inv, picked = (torch.empty(n, dtype=torch.float32) for _ in range(3))
    total = torch.empty(n, dtype=torch.float32) if with_total else None
    ranges = _split(n)
    _run((lib or library()).softmax_rows_forward, ranges, x.data_ptr(), int(x.dtype == torch.bfloat16), c,
         x.stride(0), bias.data_ptr() if bias is not None else None, labels.data_ptr(), lse.data_ptr(),
         inv.data_ptr(), picked.data_ptr(), last=[total.data_ptr() if total is not None else None] * len(ranges))
    return lse, inv, picked, total


def backward(x: torch.Tensor, labels: torch.Tensor, inv: torch.Tensor, scale: float, spread: float,
             target: float, bias_grad: bool = False, lib: ctypes.CDLL | None = None) -> torch.Tensor | None:
    """The forward's exp(x - rowmax) <- x * inv * scale - spread, and - target at each label;
    with `bias_grad`, returns the column sums of that gradient."""
    _check(x, labels)
    inv = inv.contiguous()
    # the bias gradient: one partial sum per fixed chunk of rows, added in order, so that it
    # is the same bits on any number of threads (an exact resume may run on another count)
    ranges = _split(len(x), BIAS_CHUNK if bias_grad else None)
    sums = torch.zeros((len(ranges), x.shape[1]), dtype=torch.float32) if bias_grad else None
    _run((lib or library()).softmax_rows_backward, ranges, x.data_ptr(), int(x.dtype == torch.bfloat16),
         x.shape[1], x.stride(0), labels.data_ptr(), inv.data_ptr(), scale, spread, target,
         last=[row.data_ptr() for row in sums] if sums is not None else None)
    return sums.sum(0) if sums is not None else None
