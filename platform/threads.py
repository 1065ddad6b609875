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
