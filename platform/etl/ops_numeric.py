"""Numeric ops: elementwise transforms, standardisation and per-group statistics.

Elementwise ops work on scalar and list columns alike; nulls are NaN and stay NaN
unless FillMissing fills them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayrec.etl.columns import Frame, Ragged, as_float, map_values, to_arrow
from rayrec.etl.op import FUNCTIONS, KeyedTableOp, Op, as_list, register_op
from rayrec.schema import CATEGORICAL, CONTINUOUS, ColumnSchema


def _continuous(src: ColumnSchema, name: str) -> ColumnSchema:
    tags = [t for t in src.tags if t != CATEGORICAL]
    return dataclasses.replace(src, name=name, dtype="float64", tags=list(dict.fromkeys(tags + [CONTINUOUS])),
                               domain_min=None, domain_max=None, properties={})


def _floats(col, name: str):
    return map_values(col, lambda v: as_float(v, name))


class _Elementwise(Op):
    """One float output per input column, computed value by value."""

    def apply(self, x: np.ndarray) -> np.ndarray:
        raise TypeError(f"{type(self).__name__} does not define apply()")

    def transform(self, frame: Frame) -> Frame:
        out = dict(frame)
        for c, o in zip(self.inputs(), self.outputs()):
            out[o] = map_values(_floats(frame[c], c), self.apply)
        return out

    def output_schema(self, given):
        return [_continuous(given[c], o) for c, o in zip(self.inputs(), self.outputs())]


@register_op
@dataclass
class LogOp(_Elementwise):
    """log(1 + x), for long-tailed positives such as prices and ages."""
    columns: list[str]
    out: list[str] | None = None

    def apply(self, x):
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.log1p(x)


@register_op
@dataclass
class Clip(_Elementwise):
    columns: list[str]
    min: float | None = None
    max: float | None = None
    out: list[str] | None = None

    def apply(self, x):
        return np.clip(x, -np.inf if self.min is None else self.min, np.inf if self.max is None else self.max)


@register_op
@dataclass
class FillMissing(_Elementwise):
    columns: list[str]
    value: float = 0.0
    out: list[str] | None = None

    def apply(self, x):
        return np.where(np.isnan(x), self.value, x)


@register_op
@dataclass
class Normalize(_Elementwise):
    """(x - mean) / std with mean and std over every non-null value seen at fit."""
    columns: list[str]
    out: list[str] | None = None
    stateful = True

    def partial(self, frame):
        out = {}
        for c in self.columns:
            x = _floats(frame[c], c)
            x = x.values if isinstance(x, Ragged) else x
            x = x[~np.isnan(x)]
            out[c] = (len(x), float(x.sum()), float(((x - x.mean()) ** 2).sum()) if len(x) else 0.0)
        return out

    def combine(self, parts):
        self._state = {}
        for c in self.columns:
            n, mean, m2 = 0, 0.0, 0.0
            for p in parts:   # Chan et al.'s pairwise update: stable for large counts
                nb, sb, m2b = p[c]
                if nb == 0:
                    continue
                mb = sb / nb
                delta, total = mb - mean, n + nb
                mean += delta * nb / total
                m2 += m2b + delta * delta * n * nb / total
                n = total
            std = float(np.sqrt(m2 / n)) if n else 1.0
            self._state[c] = {"mean": mean, "std": std if std > 0 else 1.0}

    def transform(self, frame):
        out = dict(frame)
        for c, o in zip(self.columns, self.outputs()):
            m, s = self._state[c]["mean"], self._state[c]["std"]
            out[o] = map_values(_floats(frame[c], c), lambda x: (x - m) / s)
        return out


@register_op
@dataclass
class Bucketize(Op):
    """Bucket i holds boundaries[i-1] <= x < boundaries[i]; nulls go to the last bucket."""
    columns: list[str]
    boundaries: list[float]
    out: list[str] | None = None

    def transform(self, frame):
        b = np.asarray(self.boundaries, dtype=np.float64)
        out = dict(frame)
        for c, o in zip(self.columns, self.outputs()):
            out[o] = map_values(_floats(frame[c], c), lambda x: np.digitize(x, b).astype(np.int64))
        return out

    def output_schema(self, given):
        return [dataclasses.replace(given[c], name=o, dtype="int64", domain_min=0,
                                    domain_max=len(self.boundaries),
                                    tags=[t for t in given[c].tags if t != CONTINUOUS] + [CATEGORICAL])
                for c, o in zip(self.columns, self.outputs())]


@register_op
@dataclass
class Rename(Op):
    mapping: dict[str, str]

    def inputs(self):
        return list(self.mapping)

    def outputs(self):
        return list(self.mapping.values())

    def transform(self, frame):
        return {self.mapping.get(k, k): v for k, v in frame.items()}


_STATS = ("count", "sum", "mean", "min", "max", "std")


@register_op
@dataclass
class JoinGroupby(KeyedTableOp):
    """Per-group statistics of continuous columns, joined back onto every row.

    Outputs are named `<group>_<column>_<stat>` (and `<group>_count`); a group never seen at
    fit gets NaN (count 0).
    """
    group: str
    columns: list[str]
    stats: list[str] = field(default_factory=lambda: ["mean"])
    table_name = "groups"

    def __post_init__(self):
        bad = sorted(set(self.stats) - set(_STATS))
        if bad:
            raise ValueError(f"JoinGroupby: unknown stats {bad}; expected some of {list(_STATS)}")

    def inputs(self):
        return [self.group] + self.columns

    def outputs(self):
        names = [f"{self.group}_count"] if "count" in self.stats else []
        return names + [f"{self.group}_{c}_{s}" for c in self.columns for s in self.stats if s != "count"]

    def partial(self, frame):
        """Per group of this partition: count, and per column the count, sum, min, max and
        M2 (the sum of squared deviations from the partition's group mean)."""
        cols = {"key": _nan_to_null(to_arrow(frame[self.group]))}
        aggs = [("key", "count", pc.CountOptions("all"))]
        for c in self.columns:
            x = as_float(frame[c], c)
            cols[c] = pc.if_else(pc.is_nan(pa.array(x)), pa.scalar(None, pa.float64()), pa.array(x))
            aggs += [(c, "sum"), (c, "count"), (c, "min"), (c, "max")]
        t = pa.table(cols)
        g = t.group_by("key").aggregate(aggs)
        group = _group_of(t.column("key"), g.column("key"))
        for c in self.columns:
            mean = _np(g.column(f"{c}_sum")) / _np(g.column(f"{c}_count"))
            with np.errstate(invalid="ignore"):
                dev = np.nan_to_num(_np(t.column(c)) - mean[group])
            g = g.append_column(f"{c}_m2", pa.array(np.bincount(group, dev * dev, minlength=len(g))))
        return g

    def combine(self, parts):
        """Groups merged across partitions with the pooled formula M2 = sum(M2_i +
        n_i (mean_i - mean)^2), as Normalize does: no E[x^2] - mean^2 cancellation."""
        t = pa.concat_tables(parts)
        aggs = [("key_count", "sum")]
        for c in self.columns:
            aggs += [(f"{c}_sum", "sum"), (f"{c}_count", "sum"), (f"{c}_min", "min"), (f"{c}_max", "max")]
        g = t.group_by("key").aggregate(aggs)
        group = _group_of(t.column("key"), g.column("key"))
        out = {"key": g.column("key"), f"{self.group}_count": g.column("key_count_sum")}
        for c in self.columns:
            n, total = _np(g.column(f"{c}_count_sum")), _np(g.column(f"{c}_sum_sum"))
            n_i, s_i, m2_i = _np(t.column(f"{c}_count")), _np(t.column(f"{c}_sum")), _np(t.column(f"{c}_m2"))
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = total / n
                shift = np.where(n_i > 0, n_i * (s_i / np.maximum(n_i, 1) - mean[group]) ** 2, 0.0)
                m2 = np.bincount(group, m2_i + np.nan_to_num(shift), minlength=len(g))
                values = {"sum": total, "mean": mean, "std": np.sqrt(m2 / n),
                          "min": _np(g.column(f"{c}_min_min")), "max": _np(g.column(f"{c}_max_max"))}
            for s in self.stats:
                if s != "count":
                    out[f"{self.group}_{c}_{s}"] = pa.array(values[s], pa.float64())
        groups = pa.table(out)
        self.load_state({}, {"groups": groups.filter(pc.is_valid(groups.column("key")))})  # null joins nothing

    def transform(self, frame):
        pos = self._index.positions(to_arrow(frame[self.group]))
        found, rows = pos >= 0, np.maximum(pos, 0)
        out = dict(frame)
        for name, v in self._values.items():
            missing = 0.0 if name == f"{self.group}_count" else np.nan
            out[name] = np.where(found, v[rows], missing) if len(v) else np.full(len(pos), missing)
        return out

    def output_schema(self, given):
        return [ColumnSchema(n, "float64", tags=[CONTINUOUS]) for n in self.outputs()]

    def load_state(self, state, tables):
        super().load_state(state, tables)
        self._values = {n: self._state.column(n).to_numpy().astype(np.float64) for n in self.outputs()}


def _np(col) -> np.ndarray:
    """A numeric column as float64, nulls as NaN."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return arr.to_numpy(zero_copy_only=False).astype(np.float64)


def _group_of(keys, groups) -> np.ndarray:
    """For each key, the row of `groups` holding it (nulls match the null group)."""
    return pc.index_in(keys, value_set=groups.combine_chunks() if isinstance(groups, pa.ChunkedArray) else groups,
                       skip_nulls=False).to_numpy(zero_copy_only=False).astype(np.int64)


def _nan_to_null(arr: pa.Array) -> pa.Array:
    if pa.types.is_floating(arr.type):
        return pc.if_else(pc.is_nan(arr), pa.scalar(None, arr.type), arr)
    return arr


@register_op
@dataclass
class RelativeDifference(Op):
    """(x - reference) / (reference + eps) where reference > 0, else 0: e.g. a price
    relative to its category's mean price."""
    column: str
    reference: str
    out: str
    eps: float = 1e-5

    def inputs(self):
        return [self.column, self.reference]

    def transform(self, frame):
        x, ref = as_float(frame[self.column], self.column), as_float(frame[self.reference], self.reference)
        with np.errstate(invalid="ignore"):
            rel = np.where(ref > 0, (x - ref) / (ref + self.eps), 0.0)
        return {**frame, self.out: rel}

    def output_schema(self, given):
        return [ColumnSchema(self.out, "float64", tags=[CONTINUOUS])]


@register_op
@dataclass
class Apply(Op):
    """A registered function of columns, referred to by name: fn(**{col: array}) -> array."""
    function: str
    columns: list[str]
    out: str
    tags: list[str] = field(default_factory=lambda: [CONTINUOUS])
    dtype: str = "float64"

    def __post_init__(self):
        self.columns = as_list(self.columns)

    def transform(self, frame):
        if self.function not in FUNCTIONS:
            raise ValueError(f"Apply: function {self.function!r} is not registered in this process; import the "
                             "module that registers it (YAML `plugins:`) before transforming")
        result = FUNCTIONS[self.function](**{c: frame[c] for c in self.columns})
        return {**frame, self.out: result}

    def output_schema(self, given):
        return [ColumnSchema(self.out, self.dtype, tags=list(self.tags))]
