"""Session parquet -> padded feature batches, and the per-worker sharding of them.

The data directory is a path or a storage URI (an ETL output published on S3, say);
workers read their row ranges straight from it.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from rayrec.files import require_complete
from rayrec.models.batch import Batch, pad_list_column, table_batch
from rayrec.models.features import FeatureSpec
from rayrec.storage import display, join, locate, open_parquet


def day_dirs(data_dir: str) -> list[int]:
    root = require_complete(data_dir, "ETL output")
    return sorted(int(i.base_name) for i in root.list() if i.base_name.isdigit() and i.type.name == "Directory")


def split_path(data_dir: str, day: int, split: str) -> str:
    path = join(data_dir, str(day), f"{split}.parquet")
    if not locate(path).is_file():
        raise FileNotFoundError(f"{display(path)}: missing; expected DIR/<day>/{{train,valid,test}}.parquet")
    return path


def load_batch(path: str, features: list[FeatureSpec], targets: list[str], max_len: int,
               rank: int = 0, world: int = 1, cover_all: bool = False) -> Batch:
    """The model's columns of one split (of this worker's shard of it, with `world` > 1):
    list features padded to max_len, session-level features and sequence-head targets as
    one value per session."""
    def dtype(f: FeatureSpec):
        return np.int64 if f.kind == "categorical" else np.float32

    names = [f.name for f in features] + [t for t in targets if t not in {f.name for f in features}]
    present = set(open_parquet(path).schema_arrow.names)  # absent ones are reported by table_batch
    table = read_shard(path, [n for n in names if n in present], rank, world, cover_all)
    lists = {f.name: dtype(f) for f in features if f.is_list}
    scalars = {f.name: dtype(f) for f in features if not f.is_list} | {t: np.float32 for t in targets}
    return table_batch(table, lists, scalars, max_len, features[0].name, where=display(path))


def load_items(path: str, item_col: str, max_len: int) -> np.ndarray:
    """Right-padded item codes [sessions, max_len] (the last max_len items of each)."""
    table = open_parquet(path).read(columns=[item_col])
    return pad_list_column(table.column(item_col), max_len)


def read_shard(path: str, columns: list[str], rank: int, world: int, cover_all: bool = False) -> pa.Table:
    """This worker's contiguous range of a parquet file's rows, reading only the row groups
    that hold it, so a worker's memory follows its shard whatever the number of files or
    row groups. For training every worker gets n // world rows (DDP steps stay in
    lock-step; at most world - 1 rows sit out); with `cover_all` (evaluation) the ranges
    cover every row."""
    f = open_parquet(path)
    if world <= 1:
        return f.read(columns=columns)
    n = f.metadata.num_rows
    if cover_all:
        lo, hi = rank * n // world, (rank + 1) * n // world
    else:
        lo, hi = rank * (n // world), (rank + 1) * (n // world)
    starts = np.cumsum([0] + [f.metadata.row_group(i).num_rows for i in range(f.num_row_groups)])
    groups = [i for i in range(f.num_row_groups) if starts[i] < hi and starts[i + 1] > lo]
    if not groups:
        return f.schema_arrow.empty_table().select(columns)
    table = f.read_row_groups(groups, columns=columns)
    return table.slice(lo - starts[groups[0]], hi - lo)


def shard_rows(n: int, rank: int, world: int, seed: int) -> np.ndarray:
    """The order of this worker's own shard in one epoch (a fresh shuffle per epoch)."""
    return np.random.default_rng([seed, rank]).permutation(n)
