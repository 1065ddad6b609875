"""Session parquet -> padded feature batches, and the per-worker sharding of them."""
from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq

from rayrec.models.batch import Batch, pad_list_column, table_batch
from rayrec.models.features import FeatureSpec


def day_dirs(data_dir: str) -> list[int]:
    return sorted(int(d) for d in os.listdir(data_dir) if d.isdigit() and os.path.isdir(os.path.join(data_dir, d)))


def split_path(data_dir: str, day: int, split: str) -> str:
    path = os.path.join(data_dir, str(day), f"{split}.parquet")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: missing; expected DIR/<day>/{{train,valid,test}}.parquet")
    return path


def load_batch(path: str, features: list[FeatureSpec], targets: list[str], max_len: int) -> Batch:
    """The model's columns of one split: list features padded to max_len, session-level
    features and sequence-head targets as one value per session."""
    def dtype(f: FeatureSpec):
        return np.int64 if f.kind == "categorical" else np.float32

    names = [f.name for f in features] + [t for t in targets if t not in {f.name for f in features}]
    present = set(pq.read_schema(path).names)  # absent ones are reported by table_batch
    table = pq.read_table(path, columns=[n for n in names if n in present])
    lists = {f.name: dtype(f) for f in features if f.is_list}
    scalars = {f.name: dtype(f) for f in features if not f.is_list} | {t: np.float32 for t in targets}
    return table_batch(table, lists, scalars, max_len, features[0].name, where=path)


def load_items(path: str, item_col: str, max_len: int) -> np.ndarray:
    """Right-padded item codes [sessions, max_len] (the last max_len items of each)."""
    table = pq.read_table(path, columns=[item_col])
    return pad_list_column(table.column(item_col), max_len)


def shard_rows(n: int, rank: int, world: int, seed: int) -> np.ndarray:
    """This worker's rows of a shuffled epoch; every worker gets the same number of rows so
    that DDP steps stay in lock-step (at most world-1 rows sit out an epoch)."""
    perm = np.random.default_rng(seed).permutation(n)
    per = n // world if world > 1 else n
    return perm[rank * per:(rank + 1) * per]
