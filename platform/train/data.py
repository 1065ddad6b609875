"""Session parquet -> padded item arrays, and the per-worker sharding of them."""
from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq

from rayrec.models.inputs import pad_list_column


def day_dirs(data_dir: str) -> list[int]:
    return sorted(int(d) for d in os.listdir(data_dir) if d.isdigit() and os.path.isdir(os.path.join(data_dir, d)))


def split_path(data_dir: str, day: int, split: str) -> str:
    path = os.path.join(data_dir, str(day), f"{split}.parquet")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: missing; expected DIR/<day>/{{train,valid,test}}.parquet")
    return path


def load_items(path: str, item_col: str, max_len: int) -> np.ndarray:
    """Right-padded item codes [sessions, max_len] (the last max_len items of each)."""
    table = pq.read_table(path, columns=[item_col])
    return pad_list_column(table.column(item_col), max_len)


def eval_examples(items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each session's last item is the target; the input is what came before it, and only
    that: the target's position is cleared, so no model can see it."""
    lengths = (items != 0).sum(1)
    keep = lengths >= 2
    items, lengths = items[keep], lengths[keep]
    rows = np.arange(len(items))
    targets = items[rows, lengths - 1].copy()
    inputs = items.copy()
    inputs[rows, lengths - 1] = 0
    return inputs, targets


def shard_rows(n: int, rank: int, world: int, seed: int) -> np.ndarray:
    """This worker's rows of a shuffled epoch; every worker gets the same number of rows so
    that DDP steps stay in lock-step (at most world-1 rows sit out an epoch)."""
    perm = np.random.default_rng(seed).permutation(n)
    per = n // world if world > 1 else n
    return perm[rank * per:(rank + 1) * per]
