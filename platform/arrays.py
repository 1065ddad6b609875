"""numpy helpers for ragged (list) columns that the ETL, the models and serving all use,
kept in this low floor so that none of them imports another for it (numpy only: the
Triton workflow model pads with it too)."""
from __future__ import annotations

import numpy as np


def pad_ragged(offsets: np.ndarray, values: np.ndarray, width: int) -> np.ndarray:
    """Rows values[offsets[i]:offsets[i+1]], last `width` of each, right-padded with 0."""
    lengths = np.minimum(np.diff(offsets), width)
    starts = offsets[1:] - lengths
    out = np.zeros((len(lengths), width), dtype=values.dtype)
    cols = np.arange(width)[None, :]
    take = cols < lengths[:, None]
    out[take] = values[(starts[:, None] + cols)[take]]
    return out
