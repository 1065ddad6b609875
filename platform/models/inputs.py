"""Ragged item lists -> fixed-length right-padded arrays, the one batch layout models take."""
from __future__ import annotations

import numpy as np
import pyarrow as pa


def pad_ragged(offsets: np.ndarray, values: np.ndarray, width: int) -> np.ndarray:
    """Rows values[offsets[i]:offsets[i+1]], last `width` of each, right-padded with 0."""
    lengths = np.minimum(np.diff(offsets), width)
    starts = offsets[1:] - lengths
    out = np.zeros((len(lengths), width), dtype=np.int64)
    cols = np.arange(width)[None, :]
    take = cols < lengths[:, None]
    out[take] = values[(starts[:, None] + cols)[take]]
    return out


def pad_list_column(column: pa.ChunkedArray | pa.Array, width: int) -> np.ndarray:
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if arr.null_count:
        raise ValueError("item list column has null rows")
    offsets = arr.offsets.to_numpy().astype(np.int64)
    values = arr.values.to_numpy().astype(np.int64)
    return pad_ragged(offsets - offsets[0], values[offsets[0]:], width)
