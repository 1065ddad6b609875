"""The fitted session workflow: item vocabulary + time origin, applied in batch and online.

Batch (a pandas partition of events, inside Dask) and online (one live session's events
from a request) run the same numpy core, `group_sessions`, so serving sees exactly the
encoding that training saw. The fitted state is data: workflow.json plus the vocabulary as
parquet; loading it executes nothing from the directory.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from rayrec.etl.config import EtlConfig
from rayrec.files import read_versioned_json
from rayrec.etl.io import canonical_key, canonical_keys, time_to_seconds, to_seconds
from rayrec.schema import CATEGORICAL, ITEM_ID, LIST, SESSION_ID, TIME, ColumnSchema, Schema

PAD, OOV, FIRST_CODE = 0, 1, 2   # 0 pads sequences; 1 holds unseen and null ids
FORMAT_VERSION = 1


@dataclass
class Grouped:
    """Sessions as ragged arrays: session i's items are items[offsets[i]:offsets[i+1]]."""
    session: np.ndarray      # per session: the session code it was grouped by
    length: np.ndarray       # per session: events after de-duplication, before truncation
    offsets: np.ndarray
    items: np.ndarray
    first_time: np.ndarray


def group_sessions(session: np.ndarray, items: np.ndarray, times: np.ndarray, max_len: int) -> Grouped:
    """Sort by (session, time), drop consecutive repeats, keep each session's last max_len.

    Ties in time are broken by item code, so the result never depends on input order.
    """
    order = np.lexsort((items, times, session))
    s, it, t = session[order], items[order], times[order]
    keep = np.ones(len(s), dtype=bool)
    keep[1:] = (s[1:] != s[:-1]) | (it[1:] != it[:-1])
    s, it, t = s[keep], it[keep], t[keep]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]]) if len(s) else np.zeros(0, dtype=np.int64)
    ends = np.r_[starts[1:], len(s)].astype(np.int64)
    cut = np.maximum(starts, ends - max_len)
    kept = ends - cut
    offsets = np.r_[0, np.cumsum(kept)].astype(np.int64)
    idx = np.repeat(cut - offsets[:-1], kept) + np.arange(offsets[-1])
    return Grouped(session=s[starts], length=ends - starts, offsets=offsets,
                   items=it[idx].astype(np.int64), first_time=t[starts])


@dataclass
class SessionWorkflow:
    config: EtlConfig
    vocab: np.ndarray          # canonical raw ids; code = FIRST_CODE + position
    vocab_counts: np.ndarray
    key_kind: str              # "int" when every raw id is an integer (answers use ints)
    day0: float                # unix seconds of UTC midnight of the first day

    # --- fitting -----------------------------------------------------------------------
    @classmethod
    def from_stats(cls, config: EtlConfig, counts: pd.Series, min_time: float) -> "SessionWorkflow":
        """Build from the distributed pass's item counts (ordered by count, then id)."""
        counts = counts[counts > 0]
        frame = pd.DataFrame({"key": counts.index.astype(str), "count": counts.to_numpy()})
        frame = frame.sort_values(["count", "key"], ascending=[False, True], kind="stable")
        keys = frame["key"].to_numpy(dtype=object)
        kind = "int" if len(keys) and all(_is_int(k) for k in keys) else "string"
        return cls(config, keys, frame["count"].to_numpy(np.int64), kind,
                   float(np.floor(min_time / 86400.0) * 86400.0))

    @property
    def cardinality(self) -> int:
        """Embedding rows needed: padding, the OOV bucket and every known id."""
        return FIRST_CODE + len(self.vocab)

    # --- encoding ----------------------------------------------------------------------
    def _index(self) -> pd.Index:
        if not hasattr(self, "_index_cache"):
            self._index_cache = pd.Index(self.vocab.astype(str))
            self._lookup = {k: FIRST_CODE + i for i, k in enumerate(self._index_cache)}
        return self._index_cache

    def encode(self, raw: pd.Series) -> np.ndarray:
        codes = self._index().get_indexer(canonical_keys(raw).fillna("\x00null"))
        return np.where(codes < 0, OOV, codes + FIRST_CODE).astype(np.int64)

    def encode_one(self, raw) -> int:
        self._index()
        key = canonical_key(raw)
        return OOV if key is None else self._lookup.get(key, OOV)

    def decode(self, codes: np.ndarray) -> list:
        """Codes back to raw ids (int or str as fitted); padding/OOV come back as None."""
        out = []
        for c in np.asarray(codes).tolist():
            if c < FIRST_CODE or c >= self.cardinality:
                out.append(None)
            else:
                k = self.vocab[c - FIRST_CODE]
                out.append(int(k) if self.key_kind == "int" else str(k))
        return out

    # --- batch transform ---------------------------------------------------------------
    def transform_partition(self, events: pd.DataFrame) -> tuple[pa.Table, dict]:
        """Events of whole sessions -> one row per kept session, plus counts for the report."""
        cfg = self.config
        keys = events[cfg.session_col]
        has_key = keys.notna().to_numpy()
        events = events[has_key]
        sess_codes, uniques = pd.factorize(events[cfg.session_col], sort=False)
        g = group_sessions(sess_codes.astype(np.int64), self.encode(events[cfg.item_col]),
                           to_seconds(events[cfg.time_col], cfg.time_col), cfg.max_len)
        long = g.length >= cfg.min_session_length
        offsets, items = _select_ragged(g.offsets, g.items, long)
        first_time = g.first_time[long]
        table = pa.table({
            cfg.session_col: pa.array(np.asarray(uniques)[g.session[long]]),
            self.item_list_col: pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(items)),
            f"{cfg.item_col}-count": pa.array(g.length[long].astype(np.int64)),
            f"{cfg.time_col}-first": pa.array(first_time),
            "day_index": pa.array(self.day_index(first_time)),
        })
        report = {"events": int(len(keys)), "events_without_session": int((~has_key).sum()),
                  "sessions": int(len(g.length)), "sessions_too_short": int((~long).sum())}
        return table, report

    def day_index(self, seconds: np.ndarray) -> np.ndarray:
        return (np.floor((seconds - self.day0) / 86400.0) + 1).astype(np.int64)

    @property
    def item_list_col(self) -> str:
        return f"{self.config.item_col}-list"

    # --- online transform --------------------------------------------------------------
    def transform_session(self, events: list[dict]) -> np.ndarray:
        """One live session's raw events -> its encoded item sequence (at most max_len).

        Unknown or null ids map to the OOV bucket; without times, the given order is kept.
        """
        cfg = self.config
        items = np.empty(len(events), dtype=np.int64)
        times = np.empty(len(events), dtype=np.float64)
        timed = [cfg.time_col in e and e[cfg.time_col] is not None for e in events]
        if any(timed) and not all(timed):
            raise ValueError(f"either every event or none has {cfg.time_col!r}")
        for i, e in enumerate(events):
            if not isinstance(e, dict) or cfg.item_col not in e:
                raise ValueError(f"events[{i}]: expected an object with {cfg.item_col!r}")
            items[i] = self.encode_one(e[cfg.item_col])
            times[i] = time_to_seconds(e[cfg.time_col], cfg.time_col) if timed[i] else i
        g = group_sessions(np.zeros(len(events), dtype=np.int64), items, times, cfg.max_len)
        return g.items

    # --- schema ------------------------------------------------------------------------
    def output_schema(self, session_dtype: str) -> Schema:
        cfg = self.config
        return Schema([
            ColumnSchema(cfg.session_col, session_dtype, tags=[SESSION_ID]),
            ColumnSchema(self.item_list_col, "int64", is_list=True, tags=[ITEM_ID, CATEGORICAL, LIST],
                         value_count_min=cfg.min_session_length, value_count_max=cfg.max_len,
                         domain_min=0, domain_max=self.cardinality - 1),
            ColumnSchema(f"{cfg.item_col}-count", "int64", tags=[]),
            ColumnSchema(f"{cfg.time_col}-first", "float64", tags=[TIME]),
            ColumnSchema("day_index", "int64", tags=[TIME]),
        ])

    # --- persistence: JSON + parquet, never pickle -------------------------------------
    def save(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        pq.write_table(pa.table({"key": pa.array(self.vocab.astype(str).tolist(), pa.string()),
                                 "count": self.vocab_counts}), os.path.join(directory, "vocab_item.parquet"))
        meta = {"format_version": FORMAT_VERSION, "config": asdict(self.config), "key_kind": self.key_kind,
                "day0": self.day0, "vocab_file": "vocab_item.parquet",
                "codes": {"padding": PAD, "oov": OOV, "first": FIRST_CODE}}
        with open(os.path.join(directory, "workflow.json"), "w") as f:
            json.dump(meta, f, indent=2)

    @classmethod
    def load(cls, directory: str) -> "SessionWorkflow":
        meta = read_versioned_json(os.path.join(directory, "workflow.json"), FORMAT_VERSION, "fitted workflow")
        vocab = pq.read_table(os.path.join(directory, os.path.basename(meta["vocab_file"])))
        return cls(EtlConfig(**meta["config"]), np.asarray(vocab["key"].to_pylist(), dtype=object),
                   vocab["count"].to_numpy(), meta["key_kind"], float(meta["day0"]))


def _select_ragged(offsets: np.ndarray, values: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.diff(offsets)[keep]
    new_offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    idx = np.repeat(offsets[:-1][keep] - new_offsets[:-1], lengths) + np.arange(new_offsets[-1])
    return new_offsets, values[idx]


def _is_int(key: str) -> bool:
    try:
        return str(int(key)) == key
    except ValueError:
        return False
