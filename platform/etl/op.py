"""What an op is, the registry of op names, and how users add their own.

An op reads some columns of a frame and writes others. A stateful op first fits
statistics: `partial` on every partition (in parallel), then `combine` once. Its fitted
state is JSON plus named arrow tables, so a saved workflow is data only: it names ops and
functions by their registered names and never stores code.

Adding an op::

    @register_op
    @dataclass
    class Square(Op):
        columns: list[str]
        def transform(self, frame):
            return {**frame, **{c: frame[c] ** 2 for c in self.columns}}

or, for a function of columns, `@register_function("name")` and the `Apply` op. The module
that registers them must be imported (YAML: `plugins: [my.module]`) before a workflow that
uses them is loaded; loading never imports anything by itself.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable, ClassVar

import pyarrow as pa

from rayrec.config_io import checked
from rayrec.etl.columns import Frame, KeyIndex
from rayrec.schema import ColumnSchema

OPS: dict[str, type["Op"]] = {}
FUNCTIONS: dict[str, Callable] = {}


def register_op(cls: type["Op"]) -> type["Op"]:
    """Make an op class loadable by its class name (dataclass fields are its parameters)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__}: ops are dataclasses; decorate with @dataclass first")
    OPS[cls.__name__] = cls
    return cls


def register_function(name: str) -> Callable[[Callable], Callable]:
    """Register fn(**columns) -> array under `name` for the Apply op."""
    def wrap(fn: Callable) -> Callable:
        FUNCTIONS[name] = fn
        return fn
    return wrap


class Op:
    """Base class: stateless, one output per input column unless an op says otherwise."""
    stateful: ClassVar[bool] = False
    removes_rows: ClassVar[bool] = False   # row filters; `online` decides if serving runs them
    online: ClassVar[bool] = True          # False: skipped when transforming a live session

    # --- columns -----------------------------------------------------------------------
    def inputs(self) -> list[str]:
        """Columns read: the op's `columns` (or its one `column`)."""
        return as_list(getattr(self, "columns", None) or getattr(self, "column", None))

    def outputs(self) -> list[str]:
        """Columns written: `out` (one name or a list), else the inputs, in place."""
        return as_list(getattr(self, "out", None)) or self.inputs()

    def output_schema(self, given: dict[str, ColumnSchema]) -> list[ColumnSchema]:
        """Schemas of the columns this op writes, from the schemas of what it reads."""
        return [dataclasses.replace(given[i], name=o) for i, o in zip(self.inputs(), self.outputs())]

    # --- fitting -----------------------------------------------------------------------
    def partial(self, frame: Frame) -> Any:
        raise TypeError(f"{type(self).__name__} fits no statistics")

    def combine(self, parts: list[Any]) -> None:
        raise TypeError(f"{type(self).__name__} fits no statistics")

    @property
    def fitted(self) -> bool:
        return not self.stateful or getattr(self, "_state", None) is not None

    # --- transforming ------------------------------------------------------------------
    def transform(self, frame: Frame) -> Frame:
        raise TypeError(f"{type(self).__name__} does not define transform()")

    # --- persistence -------------------------------------------------------------------
    def params(self) -> dict:
        return dataclasses.asdict(self)

    # By default a stateful op keeps a JSON-able dict in `_state`; ops whose state is
    # tables (vocabularies, per-group statistics) override all three methods.
    def state_json(self) -> dict:
        return getattr(self, "_state", None) or {}

    def state_tables(self) -> dict[str, pa.Table]:
        return {}

    def load_state(self, state: dict, tables: dict[str, pa.Table]) -> None:
        if self.stateful:
            self._state = state


class KeyedTableOp(Op):
    """A stateful op whose fitted state is one table with a `key` column, looked up by key
    at transform time (per-group statistics, first-seen times)."""
    stateful = True
    table_name: ClassVar[str] = "state"

    def state_json(self) -> dict:
        return {}

    def state_tables(self) -> dict[str, pa.Table]:
        return {self.table_name: self._state}

    def load_state(self, state: dict, tables: dict[str, pa.Table]) -> None:
        self._state = tables[self.table_name]
        self._index = KeyIndex(self._state.column("key"))


def op_from_dict(spec: dict) -> Op:
    """Build an op from {"op": Name, ...parameters}; unknown names and fields are errors."""
    spec = dict(spec)
    name = spec.pop("op", None)
    if name not in OPS:
        raise ValueError(f"unknown op {name!r}; known ops: {sorted(OPS)} "
                         "(custom ops must be registered by an imported plugin module)")
    cls = OPS[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(spec) - fields)
    if unknown:
        raise ValueError(f"op {name}: unknown parameter(s) {unknown}; expected some of {sorted(fields)}")
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):      # a plugin's op with annotations this module cannot resolve
        hints = {}
    for key, value in spec.items():
        if key in hints:
            if isinstance(value, str) and typing.get_origin(hints[key]) is list:
                value = [value]         # `columns: ItemId` means the one column
            spec[key] = checked(value, hints[key], f"op {name}: {key}")
    try:
        return cls(**spec)
    except TypeError as e:
        raise ValueError(f"op {name}: {e}") from None


def as_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)
