"""Session ops: de-duplication, grouping events into list rows, slicing and filtering.

They rely on one invariant the workflow keeps: every frame reaching them holds whole
sessions sorted by (session key, time), ties in the input order.
"""
from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass, field

import numpy as np

from rayrec.etl.columns import Frame, Ragged, as_float, dense_codes, is_null, run_starts, take, take_frame
from rayrec.etl.op import Op, register_op
from rayrec.schema import CONTINUOUS, LIST, ColumnSchema


@register_op
@dataclass
class DropConsecutiveRepeats(Op):
    """Drop an event that repeats the previous event's `column` value within the session
    (a page refresh): [1, 2, 2, 3, 2] -> [1, 2, 3, 2]."""
    by: str
    column: str
    removes_rows = True

    def inputs(self):
        return [self.by, self.column]

    def outputs(self):
        return []

    def transform(self, frame):
        keep = run_starts(dense_codes(frame[self.by])) | run_starts(dense_codes(frame[self.column]))
        return frame if keep.all() else take_frame(frame, np.flatnonzero(keep))


_AGGS = ("list", "count", "first", "last", "min", "max", "mean")


@register_op
@dataclass
class Groupby(Op):
    """One row per session: `by`, and `<column><sep><agg>` for each requested aggregation.

    The workflow sorts events by (by, sort) before any op runs, so lists are in time order.
    """
    by: str
    sort: str | None = None
    aggs: dict[str, list[str]] = field(default_factory=dict)
    name_sep: str = "-"

    def __post_init__(self):
        for c, aggs in self.aggs.items():
            bad = sorted(set(aggs) - set(_AGGS))
            if bad:
                raise ValueError(f"Groupby: column {c!r}: unknown aggregations {bad}; expected some of {list(_AGGS)}")

    def inputs(self):
        return [self.by] + ([self.sort] if self.sort else []) + list(self.aggs)

    def outputs(self):
        return [self.by] + [f"{c}{self.name_sep}{a}" for c, aggs in self.aggs.items() for a in aggs]

    def transform(self, frame):
        key = dense_codes(frame[self.by])
        starts = np.flatnonzero(run_starts(key))
        offsets = np.append(starts, len(key)).astype(np.int64)
        lengths = np.diff(offsets)
        out: Frame = {self.by: take(frame[self.by], starts)}
        for c, aggs in self.aggs.items():
            col = frame[c]
            for a in aggs:
                name = f"{c}{self.name_sep}{a}"
                if a == "list":
                    out[name] = Ragged(col, offsets)
                elif a == "count":
                    out[name] = lengths
                elif a == "first":
                    out[name] = take(col, starts)
                elif a == "last":
                    out[name] = take(col, offsets[1:] - 1)
                else:
                    out[name] = _reduce(as_float(col, c), starts, a)
        return out

    def output_schema(self, given):
        out = [given[self.by]]
        for c, aggs in self.aggs.items():
            src = given[c]
            for a in aggs:
                name = f"{c}{self.name_sep}{a}"
                if a == "list":
                    out.append(dataclasses.replace(src, name=name, is_list=True, tags=src.tags + [LIST],
                                                   value_count_min=None, value_count_max=None))
                elif a == "count":
                    out.append(ColumnSchema(name, "int64"))
                elif a in ("first", "last"):
                    out.append(dataclasses.replace(src, name=name))
                else:
                    out.append(ColumnSchema(name, "float64", tags=[CONTINUOUS]))
        return out


def _reduce(x: np.ndarray, starts: np.ndarray, agg: str) -> np.ndarray:
    """Per-session min/max/mean ignoring nulls (NaN when a session has none)."""
    if not len(starts):
        return np.zeros(0)
    valid = ~np.isnan(x)
    n = np.add.reduceat(valid.astype(np.int64), starts)
    if agg == "mean":
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.add.reduceat(np.where(valid, x, 0.0), starts) / n
    fill = np.inf if agg == "min" else -np.inf
    ufunc = np.minimum if agg == "min" else np.maximum
    return np.where(n > 0, ufunc.reduceat(np.where(valid, x, fill), starts), np.nan)


@register_op
@dataclass
class ListSlice(Op):
    """Python slice [start:end] of each list (negative = from the end: start=-20 keeps the
    last 20), optionally right-padded with pad_value to exactly pad_to elements."""
    columns: list[str]
    start: int = 0
    end: int | None = None
    pad_to: int | None = None
    pad_value: float = 0
    out: list[str] | None = None

    def transform(self, frame):
        out = dict(frame)
        for c, o in zip(self.columns, self.outputs()):
            col = frame[c]
            if not isinstance(col, Ragged):
                raise TypeError(f"ListSlice: column {c!r} is not a list column")
            out[o] = self.slice(col)
        return out

    def slice(self, col: Ragged) -> Ragged:
        n = col.lengths
        longest = int(n.max(initial=0))
        if self.pad_to is None and (self.start == 0 or -self.start >= longest) and \
                (self.end is None or self.end >= longest):
            return col   # every list fits: nothing to cut (the usual case online)
        lo = np.clip(np.where(self.start < 0, n + self.start, self.start), 0, n)
        hi = n if self.end is None else np.clip(np.where(self.end < 0, n + self.end, self.end), 0, n)
        hi = np.maximum(hi, lo)
        keep = hi - lo
        width = keep if self.pad_to is None else np.full(len(n), self.pad_to)
        keep = np.minimum(keep, width)
        offsets = np.zeros(len(n) + 1, dtype=np.int64)
        np.cumsum(width, out=offsets[1:])
        kept_offsets = np.zeros(len(n) + 1, dtype=np.int64)
        np.cumsum(keep, out=kept_offsets[1:])
        src = np.repeat(col.offsets[:-1] + lo - kept_offsets[:-1], keep) + np.arange(kept_offsets[-1])
        values = take(col.values, src)
        if self.pad_to is None:
            return Ragged(values, offsets)
        dst = np.repeat(offsets[:-1] - kept_offsets[:-1], keep) + np.arange(kept_offsets[-1])
        values = np.asarray(values)
        padded = np.full(offsets[-1], self.pad_value, dtype=values.dtype)
        padded[dst] = values
        return Ragged(padded, offsets)

    @property
    def max_length(self) -> int | None:
        if self.pad_to is not None:
            return self.pad_to
        if self.start < 0 and (self.end is None or self.end < 0):
            return -self.start + (self.end or 0)
        if self.start >= 0 and self.end is not None and self.end >= 0:
            return max(self.end - self.start, 0)
        return None

    def output_schema(self, given):
        return [dataclasses.replace(given[c], name=o, value_count_max=self.max_length,
                                    value_count_min=self.pad_to if self.pad_to is not None else given[c].value_count_min)
                for c, o in zip(self.columns, self.outputs())]


_COMPARE = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt,
            "==": operator.eq, "!=": operator.ne}


@register_op
@dataclass
class Filter(Op):
    """Keep rows where `column <cmp> value` (or, with cmp "notnull", where it is present).
    Training-data hygiene: skipped when transforming a live session for serving."""
    column: str
    cmp: str = ">="
    value: float | None = None
    removes_rows = True
    online = False

    def __post_init__(self):
        if self.cmp not in _COMPARE and self.cmp != "notnull":
            raise ValueError(f"Filter: unknown cmp {self.cmp!r}; expected one of {list(_COMPARE) + ['notnull']}")

    def outputs(self):
        return []

    def transform(self, frame):
        col = frame[self.column]
        if self.cmp == "notnull":
            keep = ~is_null(col)
        else:
            x = col.lengths if isinstance(col, Ragged) else as_float(col, self.column)
            keep = _COMPARE[self.cmp](x, self.value)
        return frame if keep.all() else take_frame(frame, np.flatnonzero(keep))


@register_op
@dataclass
class Select(Op):
    """Keep only these columns, in this order."""
    columns: list[str]

    def outputs(self):
        return []

    def transform(self, frame):
        return {c: frame[c] for c in self.columns}
