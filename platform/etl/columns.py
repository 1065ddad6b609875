"""Columns as the ops see them: numpy arrays, pyarrow arrays, and ragged lists.

A frame is a plain ``dict[str, Column]`` of equal-length columns. Numbers without nulls
are numpy arrays (floats carry nulls as NaN); strings and integers with nulls stay
pyarrow arrays, so ids keep their exact type; list columns are `Ragged`. Batch partitions
and one live session go through the same functions, which is what keeps serving equal to
training.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


@dataclass
class Ragged:
    """Row i holds values[offsets[i]:offsets[i+1]]."""
    values: "Column"
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


Column = Union[np.ndarray, pa.Array, Ragged]
Frame = dict[str, Column]


def nrows(frame: Frame) -> int:
    return len(next(iter(frame.values()))) if frame else 0


def from_arrow(arr: pa.Array | pa.ChunkedArray) -> Column:
    """The frame representation of an arrow column (numbers zero-copy where possible)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    t = arr.type
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        offsets = np.asarray(arr.offsets, dtype=np.int64)
        values = from_arrow(arr.values.slice(offsets[0], offsets[-1] - offsets[0]))
        return Ragged(values, offsets - offsets[0])
    if pa.types.is_floating(t):
        return arr.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    if (pa.types.is_integer(t) or pa.types.is_boolean(t)) and arr.null_count == 0:
        return arr.to_numpy(zero_copy_only=False)
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return timestamps_to_seconds(arr)
    if pa.types.is_large_string(t):
        return arr.cast(pa.string())
    if pa.types.is_dictionary(t):
        return from_arrow(arr.dictionary_decode())
    return arr


def to_arrow(col: Column) -> pa.Array:
    if isinstance(col, Ragged):
        return pa.ListArray.from_arrays(pa.array(col.offsets.astype(np.int32)), to_arrow(col.values))
    return col if isinstance(col, pa.Array) else pa.array(col)


def timestamps_to_seconds(arr: pa.Array) -> np.ndarray:
    """Timestamps and dates (any unit; naive means UTC) as float unix seconds."""
    if pa.types.is_date(arr.type):
        arr = arr.cast(pa.timestamp("s"))
    micros = arr.cast(pa.timestamp("us", tz=arr.type.tz)).cast(pa.int64())
    return micros.to_numpy(zero_copy_only=False).astype(np.float64) / 1e6


def take(col: Column, idx: np.ndarray) -> Column:
    """Rows idx of a column; list columns keep each selected row's whole list."""
    if isinstance(col, Ragged):
        lengths = col.lengths[idx]
        offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        inner = np.repeat(col.offsets[idx] - offsets[:-1], lengths) + np.arange(offsets[-1])
        return Ragged(take(col.values, inner), offsets)
    if isinstance(col, pa.Array):
        return col.take(pa.array(idx, pa.int64()))
    return col[idx]


def take_frame(frame: Frame, idx: np.ndarray) -> Frame:
    return {k: take(v, idx) for k, v in frame.items()}


def as_float(col: Column, name: str) -> np.ndarray:
    """A numeric column as float64 with NaN for nulls; a clear error for anything else."""
    if isinstance(col, Ragged):
        raise TypeError(f"column {name!r} is a list column; expected a scalar numeric column")
    if isinstance(col, np.ndarray):
        if col.dtype.kind not in "iufb":
            raise TypeError(f"column {name!r} has dtype {col.dtype}; expected a number")
        return col.astype(np.float64, copy=False)
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type)):
        raise TypeError(f"column {name!r} has type {col.type}; expected a number")
    return col.cast(pa.float64()).to_numpy(zero_copy_only=False)


def map_values(col: Column, fn) -> Column:
    """Apply an elementwise function to a scalar column or to every element of a list column."""
    if isinstance(col, Ragged):
        return Ragged(fn(col.values), col.offsets)
    return fn(col)


def is_null(col: Column) -> np.ndarray:
    if isinstance(col, np.ndarray):
        return np.isnan(col) if col.dtype.kind == "f" else np.zeros(len(col), dtype=bool)
    return col.is_null().to_numpy(zero_copy_only=False)


def dense_codes(col: Column) -> np.ndarray:
    """Integer codes with equal values <=> equal codes (nulls share one code), for grouping."""
    if isinstance(col, np.ndarray) and col.dtype.kind in "iub":
        return col.astype(np.int64, copy=False)
    arr = to_arrow(col)
    if pa.types.is_floating(arr.type):
        arr = pc.if_else(pc.is_nan(arr), pa.scalar(None, arr.type), arr)
    enc = arr.dictionary_encode(null_encoding="encode")
    return enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)


def run_starts(keys: np.ndarray) -> np.ndarray:
    """True where a run of equal consecutive keys begins."""
    starts = np.ones(len(keys), dtype=bool)
    if len(keys):
        starts[1:] = keys[1:] != keys[:-1]
    return starts


def arrow_type_name(col: Column) -> str:
    """A stable type name: what the workflow records at fit and checks at transform."""
    if isinstance(col, Ragged):
        return f"list<{arrow_type_name(col.values)}>"
    t = col.type if isinstance(col, pa.Array) else pa.from_numpy_dtype(col.dtype)
    if pa.types.is_large_string(t):
        t = pa.string()
    return str(t)


class KeyIndex:
    """Positions of values among a fitted key column (-1: absent or null): a hash join for
    batches, a dict built once for the few values of a live session."""
    SMALL = 64

    def __init__(self, keys: pa.Array | pa.ChunkedArray):
        self.keys = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
        self._dict: dict | None = None

    def positions(self, values: pa.Array) -> np.ndarray:
        if pa.types.is_floating(values.type):
            values = pc.if_else(pc.is_nan(values), pa.scalar(None, values.type), values)
        if values.type != self.keys.type:
            values = values.cast(self.keys.type)
        if len(values) <= self.SMALL:
            if self._dict is None:
                self._dict = {k: i for i, k in enumerate(self.keys.to_pylist())}
            get = self._dict.get
            return np.fromiter((-1 if v is None else get(v, -1) for v in values.to_pylist()), np.int64, len(values))
        idx = pc.index_in(values, value_set=self.keys)
        return idx.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)

    def __getstate__(self):   # ship the keys, not the dict
        return {"keys": self.keys, "_dict": None}
