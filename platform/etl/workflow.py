"""A Workflow: an input contract plus a list of ops, fitted on data and applied anywhere.

Fitting runs in levels. An op's level is the number of stateful ops upstream of its
inputs: level-0 statistics (vocabularies, means) come from the raw columns in one pass,
level-1 statistics (e.g. the mean of a log-recency that needs first-seen times) in the
next, and so on; each pass is one parallel sweep over the partitions.

Before any op runs, a frame's events are sorted by (session key, time), ties kept in
input order. Every batch partition holds whole sessions (the pipeline shuffles by session
key), and a live session is one session, so batch and online outputs are identical.

Saved as workflow.json + one parquet file per fitted table; loading builds ops from
registered names and parameters only.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rayrec.etl import ops_encode, ops_numeric, ops_session, ops_time  # noqa: F401  (registers the ops)
from rayrec.etl.columns import Frame, arrow_type_name, dense_codes, nrows, take_frame, to_arrow
from rayrec.etl.inputs import InputError, InputSpec, frame_from_table, prepare
from rayrec.etl.op import Op, op_from_dict
from rayrec.etl.ops_encode import Categorify
from rayrec.etl.ops_numeric import Rename
from rayrec.etl.ops_session import Groupby, Select
from rayrec.files import read_versioned_json
from rayrec.storage import locate, write_parquet
from rayrec.schema import CONTINUOUS, SESSION_ID, TIME, ColumnSchema, Schema

FORMAT_VERSION = 2


class Workflow:
    def __init__(self, ops: list[Op], input: InputSpec | None = None):
        self.ops = list(ops)
        self.input = input or InputSpec()
        self.input_types: dict[str, str] | None = None
        groupbys = [op for op in self.ops if isinstance(op, Groupby)]
        if len(groupbys) > 1:
            raise ValueError("a workflow holds at most one Groupby op")
        self.groupby = groupbys[0] if groupbys else None
        self._raw = self._raw_columns()
        self.levels = self._levels()

    # --- structure ---------------------------------------------------------------------
    @property
    def session_key(self) -> str | None:
        return self.groupby.by if self.groupby else self.input.session

    @property
    def sort_key(self) -> str | None:
        return self.groupby.sort if self.groupby and self.groupby.sort else self.input.time

    def raw_columns(self) -> list[str]:
        return list(self._raw)

    def _raw_columns(self) -> list[str]:
        """Raw input columns: declared, or every column an op reads before anything writes it."""
        if self.input.columns is not None:
            return list(self.input.columns)
        produced, raw = set(), []
        for c in [self.input.session, self.input.time, *self.input.numeric]:
            if c and c not in raw:
                raw.append(c)
        for op in self.ops:
            raw += [c for c in op.inputs() if c not in produced and c not in raw]
            produced |= set(op.outputs())
        return raw

    def _levels(self) -> list[int]:
        """Fit level per op: stateful ops upstream of its inputs, and never below a row
        filter before it (statistics must see the rows that reach the op)."""
        level = {c: 0 for c in self.raw_columns()}
        out, floor = [], 0
        for i, op in enumerate(self.ops):
            missing = [c for c in op.inputs() if c not in level]
            if missing:
                raise ValueError(f"op {i} ({type(op).__name__}) reads {missing}, which no earlier op writes")
            lv = max([level[c] for c in op.inputs()] + [floor])
            out.append(lv)
            if op.removes_rows:
                floor = lv
            if isinstance(op, (Groupby, Select)):   # only their outputs remain
                level = {c: level[c] for c in op.columns} if isinstance(op, Select) else {}
            level.update({c: lv + (1 if op.stateful else 0) for c in op.outputs()})
        return out

    @property
    def fitted(self) -> bool:
        return all(op.fitted for op in self.ops)

    # --- running -----------------------------------------------------------------------
    def prepare(self, frame: Frame, source: str = "input", row0: int = 0) -> tuple[Frame, int]:
        return prepare(frame, self.input, self.raw_columns(), source, row0)

    def sort(self, frame: Frame) -> Frame:
        """Order events by (session key, time), ties in input order."""
        keys = [c for c in (self.sort_key, self.session_key) if c]
        if not keys or nrows(frame) < 2:
            return frame
        cols = [np.asarray(frame[self.sort_key], dtype=np.float64)] if self.sort_key else []
        if self.session_key:
            cols.append(dense_codes(frame[self.session_key]))
        order = np.lexsort(cols)
        return frame if (order[1:] > order[:-1]).all() else take_frame(frame, order)

    def run(self, frame: Frame, level: int | None = None, online: bool = False,
            counters: dict | None = None) -> tuple[Frame, list]:
        """Run the ops on a prepared frame. With `level`, run only the ops that level's
        statistics need and return their partial statistics; else transform fully."""
        frame = self.sort(frame)
        partials = []
        steps = self.fit_plan(level)[0] if level is not None else range(len(self.ops))
        for i in steps:
            op = self.ops[i]
            if online and not op.online:
                continue
            if level is not None and op.stateful and self.levels[i] == level:
                partials.append(op.partial(frame))
                continue
            before = nrows(frame)
            frame = op.transform(frame)
            if counters is not None and op.removes_rows:
                key = f"{i:02d} {type(op).__name__}"
                counters[key] = counters.get(key, 0) + before - nrows(frame)
        return frame, partials

    def fit_plan(self, level: int) -> tuple[list[int], list[str]]:
        """The ops a fit pass at `level` must run (those feeding its stateful ops, and the
        row filters before them) and the raw columns they read: a pass reads nothing else."""
        targets = [i for i, op in enumerate(self.ops) if op.stateful and self.levels[i] == level]
        needed: set[str] = set()   # the sort keys are read raw: encoding them changes no order
        keep: list[int] = []
        for i in range(max(targets, default=-1), -1, -1):
            op = self.ops[i]
            if i in targets or op.removes_rows or needed & set(op.outputs()):
                keep.append(i)
                needed |= set(op.inputs())
        needed |= {c for c in (self.session_key, self.sort_key) if c}
        raw = [c for c in self.raw_columns() if c in needed]
        return sorted(keep), raw

    def fit_level_count(self) -> int:
        stateful = [lv for op, lv in zip(self.ops, self.levels) if op.stateful]
        return max(stateful) + 1 if stateful else 0

    def combine_level(self, level: int, partials: list[list]) -> None:
        """Give each op of `level` the partial statistics every partition computed for it."""
        ops = [op for op, lv in zip(self.ops, self.levels) if op.stateful and lv == level]
        for j, op in enumerate(ops):
            op.combine([p[j] for p in partials])

    def record_input_types(self, frame: Frame) -> None:
        types = {c: arrow_type_name(v) for c, v in frame.items()}
        if self.input_types is None:
            self.input_types = types
        else:   # a column null in one partition takes its type from another
            for c, t in types.items():
                if self.input_types.get(c) == "null":
                    self.input_types[c] = t

    def check_input_types(self, frame: Frame, source: str) -> None:
        """Refuse data whose columns or types differ from what the workflow was fitted on."""
        if self.input_types is None:
            return
        diffs = []
        for c, want in self.input_types.items():
            if c not in frame:
                diffs.append(f"column {c!r} is missing (fitted as {want})")
            else:
                got = arrow_type_name(frame[c])
                if got != want and "null" not in (got, want):
                    diffs.append(f"column {c!r} is {got}, fitted as {want}")
        if diffs:
            raise InputError(f"{source}: the data differs from what the workflow was fitted on: " + "; ".join(diffs))

    # --- in-process API ----------------------------------------------------------------
    def fit(self, data) -> "Workflow":
        """Fit on a pyarrow Table, a pandas DataFrame, or a list of them (partitions, each
        holding whole sessions)."""
        frames = [self.prepare(f, f"partition {i}")[0] for i, f in enumerate(_frames(data))]
        for f in frames:
            self.record_input_types(f)
        for level in range(self.fit_level_count()):
            self.combine_level(level, [self.run(f, level=level)[1] for f in frames])
        return self

    def transform(self, data, counters: dict | None = None) -> pa.Table:
        if not self.fitted:
            raise ValueError("the workflow is not fitted: call fit() first or load a fitted one")
        tables = []
        for i, f in enumerate(_frames(data)):
            f, _ = self.prepare(f, f"partition {i}")
            self.check_input_types(f, f"partition {i}")
            tables.append(to_table(self.run(f, counters=counters)[0]))
        return pa.concat_tables(tables) if len(tables) > 1 else tables[0]

    def fit_transform(self, data) -> pa.Table:
        return self.fit(data).transform(data)

    def transform_events(self, events: list[dict], now: float | None = None) -> Frame:
        """Online: one live session's raw events (JSON objects) -> its output row(s), with
        numpy and pyarrow only. Filters are skipped: a live session is never dropped."""
        if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
            raise InputError("events: expected a list of JSON objects")
        frame: Frame = {}
        for c in self.raw_columns():
            values = [e.get(c) for e in events]
            if c == self.input.time and all(v is None for v in values):
                values = [now if now is not None else time.time()] * len(values)
            elif c == self.input.session and all(v is None for v in values):
                values = ["live"] * len(values)
            frame[c] = self._coerce_online(c, values)
        frame, _ = self.prepare(frame, "events")
        return self.run(frame, online=True)[0]

    def _coerce_online(self, column: str, values: list) -> pa.Array:
        want = (self.input_types or {}).get(column)
        try:
            arr = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            raise InputError(f"events: field {column!r} mixes types: {values[:5]!r}") from None
        if want in (None, "null") or str(arr.type) == want or pa.types.is_null(arr.type):
            return arr
        if column == self.input.time or column in self.input.numeric:
            return arr
        try:
            return arr.cast(pa.type_for_alias(want))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
            return arr   # Categorify coerces ids itself and names a bad one

    # --- schema ------------------------------------------------------------------------
    def output_schema(self) -> Schema:
        cols = {c: self._input_schema(c) for c in self.raw_columns()}
        for op in self.ops:
            if isinstance(op, Select):
                cols = {c: cols[c] for c in op.columns}
            elif isinstance(op, Groupby):
                cols = {s.name: s for s in op.output_schema(cols)}
            elif isinstance(op, Rename):
                cols = {op.mapping.get(k, k): dataclasses.replace(v, name=op.mapping.get(k, k)) for k, v in cols.items()}
            else:
                cols.update({s.name: s for s in op.output_schema(cols)})
        return Schema(list(cols.values()))

    def _input_schema(self, c: str) -> ColumnSchema:
        t = (self.input_types or {}).get(c, "string")
        dtype = {"double": "float64", "float": "float32", "string": "string"}.get(t, t)
        tags = [SESSION_ID] if c == self.input.session else [TIME] if c == self.input.time else \
            [CONTINUOUS] if c in self.input.numeric else []
        if c == self.input.time:
            dtype = "float64"
        return ColumnSchema(c, dtype, tags=tags)

    def categorify_for(self, vocab: str) -> Categorify:
        for op in self.ops:
            if isinstance(op, Categorify) and vocab in {op.vocab_of(c) for c in op.columns}:
                return op
        raise KeyError(f"no Categorify op fits a vocabulary named {vocab!r}")

    # --- persistence -------------------------------------------------------------------
    def save(self, directory: str) -> None:
        if not self.fitted:
            raise ValueError("only a fitted workflow can be saved")
        root = locate(directory)
        ops = []
        for i, op in enumerate(self.ops):
            tables = {}
            for key, table in op.state_tables().items():
                name = f"op{i:02d}.{_safe(key)}.parquet"
                write_parquet(table, root.child(name).uri)
                tables[key] = name
            ops.append({"op": type(op).__name__, "params": op.params(), "state": op.state_json(), "tables": tables})
        meta = {"format_version": FORMAT_VERSION, "input": dataclasses.asdict(self.input),
                "input_types": self.input_types, "ops": ops}
        root.child("workflow.json").write_json(meta)   # last: its presence marks a whole workflow

    @classmethod
    def load(cls, directory: str) -> "Workflow":
        """A fitted workflow from its directory (a path or URI): JSON and parquet only."""
        root = locate(directory)
        meta = read_versioned_json(root.child("workflow.json").uri, FORMAT_VERSION, "fitted workflow")
        ops = []
        for spec in meta["ops"]:
            op = op_from_dict({"op": spec["op"], **spec["params"]})
            tables = {k: pq.read_table(root.child(os.path.basename(v)).path, filesystem=root.fs)
                      for k, v in spec["tables"].items()}
            if op.stateful:
                op.load_state(spec["state"], tables)
            ops.append(op)
        wf = cls(ops, InputSpec(**meta["input"]))
        wf.input_types = meta["input_types"]
        return wf


def to_table(frame: Frame) -> pa.Table:
    return pa.table({k: to_arrow(v) for k, v in frame.items()})


def _frames(data) -> Iterable[Frame]:
    parts = data if isinstance(data, (list, tuple)) else [data]
    for p in parts:
        if not isinstance(p, pa.Table):
            p = pa.Table.from_pandas(p, preserve_index=False)
        yield frame_from_table(p)


def _safe(key: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in key)

