"""The ETL's options, as a typed config (YAML section `etl:` or the top level of an ETL file)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EtlConfig:
    session_col: str = "user_session"
    item_col: str = "product_id"
    time_col: str = "event_time"
    max_len: int = 20              # keep the last max_len events of each session
    min_session_length: int = 2    # sessions shorter than this (after de-duplication) are dropped
    valid_fraction: float = 0.1    # random split of each day's sessions
    test_fraction: float = 0.1
    seed: int = 0
    blocksize: str = "64MB"        # input partition size for CSV

    def __post_init__(self):
        if self.max_len < 2:
            raise ValueError(f"max_len must be >= 2, got {self.max_len}")
        if not 0 <= self.valid_fraction + self.test_fraction < 1:
            raise ValueError("valid_fraction + test_fraction must lie in [0, 1)")
