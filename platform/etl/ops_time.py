"""Temporal features from unix-seconds columns (the workflow parses the time column).

Weekday and hour are UTC. Item recency needs each item's first-seen time, a fitted
statistic: at serving time an item never seen at fit counts as brand new (age 0).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayrec.etl.columns import as_float, dense_codes, to_arrow
from rayrec.etl.op import KeyedTableOp, Op, register_op
from rayrec.schema import CONTINUOUS, TIME, ColumnSchema

DAY = 86400.0
_PERIODS = {"weekday": 7, "hour": 24}


@register_op
@dataclass
class Cyclic(Op):
    """Weekday (Monday = 0) and/or hour of day as points on a circle: `<prefix>_<part>_sin/_cos`."""
    column: str
    parts: list[str] = field(default_factory=lambda: ["weekday"])
    prefix: str | None = None

    def __post_init__(self):
        bad = sorted(set(self.parts) - set(_PERIODS))
        if bad:
            raise ValueError(f"Cyclic: unknown parts {bad}; expected some of {sorted(_PERIODS)}")

    def outputs(self):
        p = self.prefix or self.column
        return [f"{p}_{part}_{f}" for part in self.parts for f in ("sin", "cos")]

    def transform(self, frame):
        t = as_float(frame[self.column], self.column)
        days = np.floor(t / DAY)
        values = {"weekday": (days + 3) % 7, "hour": np.floor((t - days * DAY) / 3600.0)}  # 1970-01-01: Thursday
        out, names = dict(frame), iter(self.outputs())
        for part in self.parts:
            angle = 2 * np.pi * values[part] / _PERIODS[part]
            out[next(names)] = np.sin(angle)
            out[next(names)] = np.cos(angle)
        return out

    def output_schema(self, given):
        return [ColumnSchema(n, "float64", tags=[CONTINUOUS, TIME]) for n in self.outputs()]


@register_op
@dataclass
class DayIndex(Op):
    """1 for the UTC day of the earliest time seen at fit, counting up by calendar day."""
    column: str
    out: str = "day_index"
    stateful = True

    def partial(self, frame):
        t = as_float(frame[self.column], self.column)
        return float(np.nanmin(t)) if len(t) and not np.isnan(t).all() else None

    def combine(self, parts):
        seen = [p for p in parts if p is not None]
        if not seen:
            raise ValueError(f"DayIndex: column {self.column!r} holds no times")
        self._state = {"day0": float(np.floor(min(seen) / DAY))}

    def transform(self, frame):
        t = as_float(frame[self.column], self.column)
        return {**frame, self.out: (np.floor(t / DAY) - self._state["day0"] + 1).astype(np.int64)}

    def output_schema(self, given):
        return [ColumnSchema(self.out, "int64", tags=[TIME])]


@register_op
@dataclass
class ItemRecency(KeyedTableOp):
    """Age of the item at event time, in days since it was first seen (never negative)."""
    item: str
    time: str
    out: str
    table_name = "first_seen"

    def inputs(self):
        return [self.item, self.time]

    def partial(self, frame):
        t = pa.table({"key": to_arrow(frame[self.item]), "t": as_float(frame[self.time], self.time)})
        return t.group_by("key").aggregate([("t", "min")])

    def combine(self, parts):
        t = pa.concat_tables(parts).group_by("key").aggregate([("t_min", "min")])
        t = t.filter(pc.is_valid(t.column("key")))
        self.load_state({}, {"first_seen": t.rename_columns(["key", "first_seen"])})

    def transform(self, frame):
        pos = self._index.positions(to_arrow(frame[self.item]))
        t = as_float(frame[self.time], self.time)
        start = np.where(pos >= 0, self._first[np.maximum(pos, 0)] if len(self._first) else t, t)
        return {**frame, self.out: np.maximum((t - start) / DAY, 0.0)}

    def output_schema(self, given):
        return [ColumnSchema(self.out, "float64", tags=[CONTINUOUS])]

    def load_state(self, state, tables):
        super().load_state(state, tables)
        self._first = self._state.column("first_seen").to_numpy()


@register_op
@dataclass
class DifferenceLag(Op):
    """x minus the previous row's x within the same session (NaN for a session's first row).
    Rows arrive sorted by (session, time): the workflow guarantees it."""
    column: str
    by: str
    out: str
    shift: int = 1

    def inputs(self):
        return [self.column, self.by]

    def transform(self, frame):
        x = as_float(frame[self.column], self.column)
        key = dense_codes(frame[self.by])
        diff = np.full(len(x), np.nan)
        s = self.shift
        if 0 < s < len(x):
            same = key[s:] == key[:-s]
            diff[s:] = np.where(same, x[s:] - x[:-s], np.nan)
        return {**frame, self.out: diff}

    def output_schema(self, given):
        return [ColumnSchema(self.out, "float64", tags=[CONTINUOUS])]
