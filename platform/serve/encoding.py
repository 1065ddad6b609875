"""Encode: one live session's raw events -> the model's feature arrays, with numpy and
pyarrow only (no torch), so that a serving process without torch (Triton's python
backend, exported by triton_repo.py) encodes exactly as the in-process Recommender does.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from rayrec.arrays import pad_ragged
from rayrec.etl.columns import Ragged
from rayrec.etl.workflow import Workflow


@dataclass(frozen=True)
class ModelInput:
    """What encoding needs of one model input: its column, list or per session, and
    whether it holds codes (int64) or values (float32)."""
    name: str
    is_list: bool
    categorical: bool

    @property
    def dtype(self):
        return np.int64 if self.categorical else np.float32

    def to_dict(self) -> dict:
        return asdict(self)


def encode_session(workflow: Workflow, features: list[ModelInput], item_col: str,
                   events: list[dict]) -> dict[str, np.ndarray]:
    """One session's raw events -> its feature arrays, unpadded (the workflow online)."""
    frame = workflow.transform_events(events)
    item = frame[item_col]
    if not isinstance(item, Ragged) or len(item) != 1:
        raise ValueError(f"events: expected the events of one session, got {len(item)} sessions")
    row = {}
    for f in features:
        if f.name not in frame:
            raise ValueError(f"the workflow does not produce model feature {f.name!r}")
        col = frame[f.name]
        if f.is_list:
            row[f.name] = np.asarray(col.values[col.offsets[0]:col.offsets[1]], dtype=f.dtype)
        else:
            row[f.name] = np.asarray(col, dtype=f.dtype)[:1]
    return row


def pad_rows(features: list[ModelInput], rows: list[dict[str, np.ndarray]], width: int | None = None) -> dict:
    """Sessions' feature arrays -> one batch: list features right-padded to `width` (the
    latest events kept), or to the longest session when `width` is None."""
    batch = {}
    for f in features:
        parts = [r[f.name] for r in rows]
        if f.is_list:
            lengths = np.array([len(p) for p in parts])
            offsets = np.concatenate([[0], np.cumsum(lengths)])
            batch[f.name] = pad_ragged(offsets, np.concatenate(parts).astype(f.dtype, copy=False),
                                       width or max(int(lengths.max()), 1))
        else:
            batch[f.name] = np.concatenate(parts).astype(f.dtype, copy=False)
    return batch
