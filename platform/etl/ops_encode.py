"""Categorify: raw ids -> contiguous integer codes, fitted from counts over all partitions.

Code layout (start_index s, default 1, so that 0 stays free for padding):
s = out-of-vocabulary (unseen, rarer than freq_threshold, or cut by max_size),
s+1 = null, s+2... = known values by descending frequency (ties by value). With s=1 this
is NVTabular 23.08's layout (0 pad, 1 OOV, 2 null, values from 3).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayrec.etl.columns import Frame, KeyIndex, Ragged, map_values, to_arrow
from rayrec.etl.op import Op, register_op
from rayrec.schema import CATEGORICAL, CONTINUOUS, ColumnSchema

@register_op
@dataclass
class Categorify(Op):
    columns: list[str]
    out: list[str] | None = None
    vocab: str | None = None          # one shared vocabulary for all columns, by this name
    start_index: int = 1
    freq_threshold: int = 1           # values seen fewer times than this are OOV
    max_size: int | None = None       # keep only the most frequent max_size values
    tags: list[str] = field(default_factory=list)
    stateful = True

    def __post_init__(self):
        if self.start_index < 1:
            raise ValueError("Categorify: start_index must be >= 1 (code 0 is padding)")

    def vocab_of(self, column: str) -> str:
        return self.vocab or column

    def _groups(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for c in self.columns:
            groups.setdefault(self.vocab_of(c), []).append(c)
        return groups

    # --- fit ---------------------------------------------------------------------------
    def partial(self, frame: Frame) -> dict[str, pa.Table]:
        out = {}
        for name, cols in self._groups().items():
            values = [_flat(frame[c]) for c in cols]
            values = [v for v in values if not pa.types.is_null(v.type)]
            if values:
                vc = pc.value_counts(pa.chunked_array(values, type=values[0].type).combine_chunks()
                                     if len(values) > 1 else values[0])
                out[name] = pa.table({"value": vc.field(0), "count": vc.field(1)})
        return out

    def combine(self, parts: list[dict[str, pa.Table]]) -> None:
        state = {}
        for name in self._groups():
            tables = [p[name] for p in parts if name in p]
            if not tables:
                raise ValueError(f"Categorify: no values at all in column(s) {self._groups()[name]}")
            typ = tables[0].column("value").type
            t = pa.concat_tables([tb.cast(pa.schema([("value", typ), ("count", pa.int64())])) for tb in tables])
            t = t.filter(pc.is_valid(t.column("value")))
            t = t.group_by("value").aggregate([("count", "sum")]).rename_columns(["value", "count"])
            t = t.filter(pc.greater_equal(t.column("count"), self.freq_threshold))
            t = t.sort_by([("count", "descending"), ("value", "ascending")])
            if self.max_size is not None:
                t = t.slice(0, self.max_size)
            state[name] = t
        self._state = state
        self._index: dict[str, KeyIndex] = {}

    # --- transform ---------------------------------------------------------------------
    def transform(self, frame: Frame) -> Frame:
        out = dict(frame)
        for col, name in zip(self.columns, self.outputs()):
            out[name] = map_values(frame[col], lambda v, c=col: self.encode(v, self.vocab_of(c), c))
        return out

    def encode(self, values, vocab: str, column: str) -> np.ndarray:
        if vocab not in self._index:
            self._index[vocab] = KeyIndex(self._state[vocab].column("value"))
        index = self._index[vocab]
        arr = _coerce(to_arrow(values), index.keys.type, column)
        s = self.start_index
        pos = index.positions(arr)
        codes = np.where(pos >= 0, pos + s + 2, s)
        if arr.null_count:
            codes[arr.is_null().to_numpy(zero_copy_only=False)] = s + 1
        return codes

    def decode(self, codes: np.ndarray, vocab: str) -> list:
        """Codes back to raw values; padding, OOV and null codes come back as None."""
        known = self._state[vocab].column("value")
        first = self.start_index + 2
        pos = np.asarray(codes, dtype=np.int64) - first
        inside = (pos >= 0) & (pos < len(known))
        values = known.take(pa.array(np.where(inside, pos, 0))).to_pylist() if len(known) else [None] * len(pos)
        # O(len(codes)): only the asked-for rows are taken from the vocabulary
        return [v if ok else None for v, ok in zip(values, inside.tolist())]

    def value_type(self, vocab: str) -> str:
        """The type of the raw values of a vocabulary (int64, string...)."""
        return str(self._state[vocab].schema.field("value").type)

    def cardinality(self, vocab: str) -> int:
        """Embedding rows needed: padding, the specials and every known value."""
        return self.start_index + 2 + self._state[vocab].num_rows

    # --- schema and persistence --------------------------------------------------------
    def output_schema(self, given: dict[str, ColumnSchema]) -> list[ColumnSchema]:
        out = []
        for col, name in zip(self.columns, self.outputs()):
            src = given[col]
            tags = [t for t in src.tags if t != CONTINUOUS] + [CATEGORICAL] + list(self.tags)
            vocab = self.vocab_of(col)
            out.append(dataclasses.replace(
                src, name=name, dtype="int64", tags=list(dict.fromkeys(tags)), domain_min=0,
                domain_max=self.cardinality(vocab) - 1,
                properties={**src.properties, "vocab": vocab, "start_index": self.start_index,
                            "first_code": self.start_index + 2}))
        return out

    def state_json(self) -> dict:
        return {}

    def state_tables(self) -> dict[str, pa.Table]:
        return {f"vocab.{name}": t for name, t in self._state.items()}

    def load_state(self, state: dict, tables: dict[str, pa.Table]) -> None:
        self._state = {name: tables[f"vocab.{name}"] for name in self._groups()}
        self._index = {}


def _flat(col) -> pa.Array:
    arr = to_arrow(col.values if isinstance(col, Ragged) else col)
    if pa.types.is_floating(arr.type):
        arr = pc.if_else(pc.is_nan(arr), pa.scalar(None, arr.type), arr)
    return arr


def _coerce(arr: pa.Array, typ: pa.DataType, column: str) -> pa.Array:
    """Values in the vocabulary's type: a live request may send "123" for an int id."""
    if arr.type == typ:
        return arr
    if pa.types.is_null(arr.type):
        return pa.nulls(len(arr), typ)
    if pa.types.is_floating(arr.type):
        arr = pc.if_else(pc.is_nan(arr), pa.scalar(None, arr.type), arr)
    try:
        return arr.cast(typ)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        bad = next(v for v in arr.to_pylist() if v is not None and _fails(v, typ))
        raise ValueError(f"column {column!r}: value {bad!r} is not a {typ} as the fitted "
                         "vocabulary expects") from None


def _fails(value, typ: pa.DataType) -> bool:
    try:
        pa.array([value]).cast(typ)
        return False
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return True
