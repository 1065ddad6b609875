"""The one batch layout models take: a dict {column: array}. List columns are right-padded
to max_len ([sessions, max_len], 0 = padding, the last max_len events of each session);
session-level columns are one value per session ([sessions]).

Evaluation examples are cut here, before any model sees them: the target item's position
and everything after it are cleared in every list column, so no feature of the predicted
event reaches the model.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from rayrec.arrays import pad_ragged

Batch = dict[str, np.ndarray]
PAD = 0


def list_lengths(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return np.diff(arr.offsets.to_numpy()).astype(np.int64)


def pad_list_column(column: pa.ChunkedArray | pa.Array, width: int, dtype=np.int64, name: str = "") -> np.ndarray:
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if arr.null_count:
        raise ValueError(f"list column {name!r} has null rows (row {_first_null(arr)})")
    if arr.values.null_count:
        raise ValueError(f"list column {name!r} holds null values; fill them in the ETL (FillMissing)")
    offsets = arr.offsets.to_numpy().astype(np.int64)
    values = arr.values.to_numpy(zero_copy_only=False).astype(dtype)
    return pad_ragged(offsets - offsets[0], values[offsets[0]:], width)


def _first_null(arr: pa.Array) -> int:
    return int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])


def table_batch(table: pa.Table, list_cols: dict[str, type], scalar_cols: dict[str, type], max_len: int,
                item_col: str, where: str = "") -> Batch:
    """Padded arrays for the given columns of a session table; every list column of a row
    must be as long as its item list (they describe the same events)."""
    missing = [c for c in [*list_cols, *scalar_cols] if c not in table.column_names]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}; the model needs {[*list_cols, *scalar_cols]}")
    out: Batch = {}
    item_lengths = list_lengths(table.column(item_col))
    for name, dtype in list_cols.items():
        col = table.column(name)
        if not pa.types.is_list(col.type) and not pa.types.is_large_list(col.type):
            raise ValueError(f"{where}: column {name!r} is {col.type}, expected a list column")
        bad = np.flatnonzero(list_lengths(col) != item_lengths)
        if len(bad):
            raise ValueError(f"{where}: column {name!r}, row {bad[0]}: {list_lengths(col)[bad[0]]} values but "
                             f"{item_lengths[bad[0]]} items in {item_col!r}")
        out[name] = pad_list_column(col, max_len, dtype, name)
    for name, dtype in scalar_cols.items():
        col = table.column(name)
        if col.null_count:
            raise ValueError(f"{where}: column {name!r} has nulls (row {_first_null(col.combine_chunks())})")
        out[name] = col.to_numpy().astype(dtype)
    return out


def take(batch: Batch, rows) -> Batch:
    return {k: v[rows] for k, v in batch.items()}


def concat_batches(batches: list[Batch]) -> Batch:
    if len(batches) == 1:
        return batches[0]
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def to_tensors(batch: Batch) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}


def eval_examples(batch: Batch, item_col: str, list_cols: list[str], on: str = "last") -> tuple[Batch, np.ndarray]:
    """(inputs, targets). `last`: each session's last item is the target. `all`: every
    position after the first is a target, each with its own prefix as input. Sessions
    with fewer than 2 items have nothing to predict from and are left out."""
    items = batch[item_col]
    lengths = (items != PAD).sum(1)
    if on == "last":
        rows = np.flatnonzero(lengths >= 2)
        cut = lengths[rows] - 1
    else:
        rows = np.repeat(np.arange(len(items)), np.maximum(lengths - 1, 0))
        first = np.cumsum(np.maximum(lengths - 1, 0)) - np.maximum(lengths - 1, 0)
        cut = np.arange(len(rows)) - np.repeat(first, np.maximum(lengths - 1, 0)) + 1
    targets = items[rows, cut]
    keep = np.arange(items.shape[1])[None, :] < cut[:, None]
    inputs = take(batch, rows)
    for name in list_cols:
        inputs[name] = np.where(keep, inputs[name], 0).astype(batch[name].dtype)
    return inputs, targets


def fit_to_length(batch: dict[str, torch.Tensor], item_col: str, list_cols: list[str], max_len: int,
                  need_slot: bool) -> dict[str, torch.Tensor]:
    """Right-padded list columns of any width -> exactly max_len positions, dropping the
    oldest events, and keeping one free position after the last item when the model
    places a mask there."""
    limit = max_len - 1 if need_slot else max_len
    lengths = (batch[item_col] != PAD).sum(1)
    over = (lengths - limit).clamp(min=0)
    out = dict(batch)
    for name in list_cols:
        t = batch[name]
        if t.shape[1] < max_len:
            t = F.pad(t, (0, max_len - t.shape[1]), value=0)
        idx = torch.arange(t.shape[1], device=t.device)[None, :] + over[:, None]  # no branch: traceable
        t = torch.where(idx < t.shape[1], t.gather(1, idx.clamp(max=t.shape[1] - 1)), torch.zeros_like(t))
        out[name] = t[:, :max_len]
    return out


def right_padded(attend: torch.Tensor) -> bool:
    """True when every row of a [B, L] mask is a run of attended positions and then only
    padding, the layout above; the bodies that skip padding (unpad, gru_fast) check it."""
    lengths = attend.sum(1, keepdim=True)
    return bool((attend == (torch.arange(attend.shape[1], device=attend.device) < lengths)).all())
