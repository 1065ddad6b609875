"""How many torch threads a process should use: `auto` is its share of the machine's
cores, so the defaults use the machine (two in-process training threads on 2 cores, not
one), and processes sharing a node split it instead of oversubscribing it.

The cores are the ones this process may run on (its CPU affinity) within the container's
CPU quota (cgroup v2 `cpu.max`), which is what a Kubernetes pod's limit sets.
"""
from __future__ import annotations

import math
import os

AUTO = "auto"


def usable_cores() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def check_threads(value, field: str) -> None:
    """`auto` or an integer >= 1; the error names the config field."""
    if value == AUTO:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field} must be 'auto' or an integer >= 1; got {value!r}")


def threads_for(value, sharing: int = 1) -> int:
    """The threads for a setting: a number as given; `auto`, the usable cores split
    between `sharing` processes on this node."""
    if value == AUTO:
        return max(1, usable_cores() // max(1, sharing))
    return int(value)


# ---- how idle OpenMP threads wait -------------------------------------------------------
# torch's intra-op pool (and rayrec's C kernels, which run on it) is GNU OpenMP. After each
# parallel region its threads spin for GOMP_SPINCOUNT iterations (300,000 by default, a few
# milliseconds) before they sleep. On an idle node that spin is free; beside any other
# process it is not: a region cannot end until its descheduled thread runs, and the
# spinning threads burn the time slices that thread needs (BENCHMARKS.md, issue 34).
# libgomp reads the setting once, when torch loads it, so it must be in the environment a
# process starts with: rayrec puts it in the environment of the processes it starts (Ray
# Train workers, Serve replicas, Tune trials) and the CLI in its own, from the typed
# `omp_wait` setting.
WAIT_AUTO_SPIN = 3000          # measured: issue 34 in BENCHMARKS.md
RUNTIME_SPIN = 300_000         # libgomp's own default (no variables set)


def check_wait(value, field: str) -> None:
    """`auto`, `passive` or a spin count >= 0; the error names the config field."""
    if value in ("auto", "passive"):
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{field} must be auto, passive or a spin count >= 0 (libgomp's own default is "
                         f"{RUNTIME_SPIN}); got {value!r}")


def wait_env(value) -> dict[str, str]:
    """The variables that give a process's OpenMP threads the `value` wait policy: `auto`, a
    short spin (WAIT_AUTO_SPIN iterations, some tens of microseconds); `passive`, sleep at once;
    a number, that spin count. Every value sets GOMP_SPINCOUNT, so that it replaces
    whatever a worker would inherit from the process that started its node."""
    if value == "passive":
        return {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "0"}
    return {"GOMP_SPINCOUNT": str(WAIT_AUTO_SPIN if value == "auto" else int(value))}


def wait_in_effect(environ=None) -> str:
    """How this process's OpenMP threads wait, from the environment it started with (a
    worker reads its own back; the training header and metrics.json say it)."""
    environ = os.environ if environ is None else environ
    if environ.get("OMP_WAIT_POLICY", "").lower() == "passive":
        return "sleep"
    return f"spin {environ.get('GOMP_SPINCOUNT', RUNTIME_SPIN)}"


def wait_report(value, field: str) -> str:
    """For a command's header: how idle threads wait here and the setting asked for; where
    they differ (a caller's process loaded torch before rayrec could set it), why."""
    have, want = wait_in_effect(), wait_env(value)
    said = f"idle threads {have} ({field}: {value})"
    if have == wait_in_effect(want):
        return said
    return f"{said}; not applied: this process loaded torch first (it applies to the processes rayrec starts)"
