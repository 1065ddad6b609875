"""The ETL run's options, as a typed config (YAML section `etl:`).

The first block shapes the default workflow, used when the config has no `workflow:`
section (session/item/time columns -> item-id sequences by day). The rest applies to
every workflow: how the output is split and which engine runs it.
"""
from __future__ import annotations

from dataclasses import dataclass

_UNITS = {"kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30, "b": 1}


@dataclass
class EtlConfig:
    session_col: str = "user_session"
    item_col: str = "product_id"
    time_col: str = "event_time"
    max_len: int = 20              # keep the last max_len events of each session
    min_session_length: int = 2    # sessions shorter than this (after de-duplication) are dropped
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    split: str = "random"          # random: seeded hash of the session key; time: latest sessions of each day
    seed: int = 0
    day_column: str = "day_index"  # output column that partitions the output by day
    blocksize: str = "32MB"        # input bytes per read task
    partition_size: str = "256MB"  # input bytes per shuffled partition (bounds worker memory)
    scheduler: str | None = None   # address of an existing Dask scheduler; default: a local cluster
    device: str = "cpu"            # cpu, or gpu (dask-cuda + cuDF: the `gpu` extra)
    workers: int | None = None     # local cluster processes; default: one per core

    def __post_init__(self):
        if self.max_len < 2:
            raise ValueError(f"max_len must be >= 2, got {self.max_len}")
        if not 0 <= self.valid_fraction + self.test_fraction < 1:
            raise ValueError("valid_fraction + test_fraction must lie in [0, 1)")
        if self.split not in ("random", "time"):
            raise ValueError(f"split must be 'random' or 'time', got {self.split!r}")
        if self.device not in ("cpu", "gpu"):
            raise ValueError(f"device must be 'cpu' or 'gpu', got {self.device!r}")
        parse_bytes(self.blocksize)
        parse_bytes(self.partition_size)


def parse_bytes(text: str | int) -> int:
    if isinstance(text, int):
        return text
    t = text.strip().lower()
    for unit, mult in _UNITS.items():
        if t.endswith(unit) and t[: -len(unit)].strip().replace(".", "", 1).isdigit():
            return int(float(t[: -len(unit)]) * mult)
    if t.isdigit():
        return int(t)
    raise ValueError(f"cannot read a size from {text!r}; expected e.g. '64MB'")
