"""rayrec's C kernels (softmax_rows.c, dropout.c, gru.c): built ahead of time by `rayrec
build-kernels`, loaded by ctypes, and run on torch's own OpenMP threads.

Eager torch leaves some of a CPU step's passes without a fused kernel: the loss's softmax
over bf16 logits, dropout, whose mask it draws and applies in separate passes, and a GRU
step's gates (ten small ops per time step). Those are small loops in C here, with no
Python or torch headers.

The library is compiled with the machine's C compiler (`-march=native`, so it is keyed by
CPU as well as by source) into ~/.cache/rayrec/kernels, and published by an atomic rename
so that concurrent builders never leave a half-written file. It is built by an explicit
step (`rayrec build-kernels`: `make install`, the Dockerfile and the cluster images run
it), never when a model is built: a compile on first use ran on every fresh node, Serve
replica, `evaluate` and export, and its failures were silent. Where no library was built
for this machine, `library()` is None, accel logs why once, and every caller keeps its
torch path; both paths are tested. It links OpenMP by the name torch's runtime already
loaded (libgomp.so.1), so its loops share torch's thread pool: a second pool of threads
measured slower, competing with torch's spinning workers.
Nothing is loaded but the file built from this package's own sources.
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

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = tuple(os.path.join(HERE, name) for name in ("softmax_rows.c", "dropout.c", "gru.c"))
HEADERS = tuple(os.path.join(HERE, name) for name in ("bf16.h", "expf.h", "schedule.h"))
FLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fPIC", "-shared")


class KernelBuildError(RuntimeError):
    """The kernels did not build: the message says why (the compiler's own words)."""


def cache_dir() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "rayrec", "kernels")


@functools.cache
def _cpu() -> str:
    """What -march=native depends on: the CPU's model and feature flags."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags", "Features"))]
        return platform.machine() + "".join(sorted(set(lines)))
    except OSError:
        return platform.machine() + platform.processor()


def compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


@functools.cache
def _key(flags: tuple[str, ...], cc: str) -> str:
    key = hashlib.sha256(_cpu().encode() + cc.encode() + " ".join(flags).encode())
    for source in SOURCES + HEADERS:
        with open(source, "rb") as f:
            key.update(f.read())
    return key.hexdigest()[:16]


def library_path(flags: tuple[str, ...] = FLAGS) -> str:
    """Where the library for this machine, compiler, sources and flags is (or would be) cached."""
    return os.path.join(cache_dir(), f"rayrec-kernels-{_key(flags, compiler() or '')}.so")


@functools.cache
def _find(directory: str, cc_setting: str | None) -> ctypes.CDLL | None:
    path = library_path()
    return load(path) if os.path.exists(path) else None


def library() -> ctypes.CDLL | None:
    """This machine's prebuilt kernels, or None where `rayrec build-kernels` built none
    (looked up once per cache folder and compiler setting)."""
    return _find(cache_dir(), os.environ.get("CC"))


def status() -> str:
    """"built", or why the torch passes run instead."""
    if library() is not None:
        return "built"
    if compiler() is None:
        return "not built: no C compiler on this machine (cc, gcc or $CC)"
    return "not built for this machine and sources: run `rayrec build-kernels`"


def build(flags: tuple[str, ...] = FLAGS) -> str | None:
    """The compiled library's path in the cache (compiled now if it is not there); None
    where it does not build (compile() says why)."""
    try:
        return compile_library(flags)
    except KernelBuildError:
        return None


def compile_library(flags: tuple[str, ...] = FLAGS) -> str:
    """Compile (unless cached) and publish the library whole; raises KernelBuildError."""
    cc = compiler()
    if cc is None:
        raise KernelBuildError("no C compiler on this machine (cc, gcc or $CC)")
    missing = [s for s in SOURCES + HEADERS if not os.path.exists(s)]
    if missing:
        raise KernelBuildError(f"kernel sources missing from the installed package: {', '.join(missing)}")
    path = library_path(flags)
    if os.path.exists(path):
        return path
    tmp = None
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(path))
        os.close(fd)
        done = subprocess.run([cc, *flags, *SOURCES, "-o", tmp, "-lm"], capture_output=True, text=True,
                              timeout=300)
        if done.returncode != 0:
            raise KernelBuildError(f"{cc} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
        os.replace(tmp, path)   # published whole: a concurrent loader sees either nothing or all of it
        tmp = None
        _find.cache_clear()
        return path
    except (OSError, subprocess.SubprocessError) as e:
        raise KernelBuildError(f"{cc} could not run: {e}") from None
    finally:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)


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

