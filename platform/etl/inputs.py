"""The workflow's input contract: which raw column is the session, the time, a number.

`prepare` turns one partition of raw events into a frame the ops can trust: times as float
unix seconds, numbers as floats, rows without a session key dropped (and counted). Every
failure names the source, the column, the first offending row and its value.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayrec.etl.columns import Frame, from_arrow, is_null, take_frame, timestamps_to_seconds, to_arrow

_TIME_FORMATS = ("%Y-%m-%d %H:%M:%S UTC", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%SZ")


@dataclass
class InputSpec:
    session: str | None = None      # rows without it are dropped and counted
    time: str | None = None         # parsed to float unix seconds (text, timestamps or numbers)
    numeric: list[str] = field(default_factory=list)  # must hold numbers (nulls allowed)
    columns: list[str] | None = None  # raw columns read; default: what the ops need


class InputError(ValueError):
    """Bad input data: the message names where."""


def where(source: str, column: str, row: int) -> str:
    return f"{source}: column {column!r}, row {row}"


def parse_times(arr: pa.Array, column: str, source: str, row0: int) -> np.ndarray:
    """Float unix seconds from text (ISO-like, ' UTC' suffix allowed; naive = UTC),
    timestamps, dates or numbers (taken as seconds)."""
    if isinstance(arr, np.ndarray):
        return arr.astype(np.float64, copy=False)
    t = arr.type
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return timestamps_to_seconds(arr)
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return arr.cast(pa.float64()).to_numpy(zero_copy_only=False)
    if pa.types.is_null(t):
        return np.full(len(arr), np.nan)
    if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
        raise InputError(f"{source}: column {column!r} has type {t}; expected times")
    parsed = _strptime(arr)
    bad = pc.and_(parsed.is_null(), arr.is_valid())
    if pc.any(bad).as_py():
        i = int(np.flatnonzero(bad.to_numpy(zero_copy_only=False))[0])
        raise InputError(f"{where(source, column, row0 + i)}: cannot parse time {arr[i].as_py()!r} "
                         "(expected e.g. '2019-10-01 00:00:04 UTC', ISO 8601 or unix seconds)")
    return timestamps_to_seconds(parsed)


def _strptime(arr: pa.Array) -> pa.Array:
    """Parse with the first format that reads the first value; then ISO 8601 casts; then
    value by value, which exists to put a null where a value fails."""
    sample = next((v for v in arr.slice(0, 1000).to_pylist() if v is not None), None)
    if sample is None:
        return pa.nulls(len(arr), pa.timestamp("s"))
    for fmt in _TIME_FORMATS:
        try:
            pc.strptime(pa.array([sample]), format=fmt, unit="s")
        except pa.ArrowInvalid:
            continue
        return pc.strptime(arr, format=fmt, unit="s", error_is_null=True)
    for typ in _ISO_TYPES:
        try:
            return arr.cast(typ).cast(pa.timestamp("us", tz="UTC"))
        except pa.ArrowInvalid:
            continue
    return pa.array([_parse_one(v) for v in arr.to_pylist()], pa.timestamp("us", tz="UTC"))


_ISO_TYPES = (pa.timestamp("us"), pa.timestamp("us", tz="UTC"))


def _parse_one(value: str | None):
    for typ in _ISO_TYPES:
        try:
            return None if value is None else pa.array([value]).cast(typ).cast(pa.timestamp("us", tz="UTC"))[0].as_py()
        except pa.ArrowInvalid:
            continue
    return None


def to_numbers(col, column: str, source: str, row0: int) -> np.ndarray:
    """A column that must be numeric: floats with NaN for nulls, or an error naming the row."""
    if isinstance(col, np.ndarray) and col.dtype.kind in "iufb":
        return col.astype(np.float64, copy=False)
    arr = to_arrow(col)
    if pa.types.is_null(arr.type):
        return np.full(len(arr), np.nan)
    if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type) or pa.types.is_boolean(arr.type):
        return arr.cast(pa.float64()).to_numpy(zero_copy_only=False)
    try:
        return arr.cast(pa.float64()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:
        for i, v in enumerate(arr.to_pylist()):
            try:
                float(v) if v is not None else None
            except (TypeError, ValueError):
                raise InputError(f"{where(source, column, row0 + i)}: {v!r} is not a number") from None
        raise


def prepare(frame: Frame, spec: InputSpec, required: list[str], source: str, row0: int = 0) -> tuple[Frame, int]:
    """Check, parse and clean one partition; returns the frame and the rows dropped for
    having no session key."""
    missing = [c for c in required if c not in frame]
    if missing:
        raise InputError(f"{source}: missing column(s) {missing}; it has {sorted(frame)}")
    frame = {c: frame[c] for c in required}
    if spec.time:
        frame[spec.time] = parse_times(frame[spec.time], spec.time, source, row0)
    for c in spec.numeric:
        frame[c] = to_numbers(frame[c], c, source, row0)
    null = is_null(frame[spec.session]) if spec.session else np.zeros(len(next(iter(frame.values()))), bool)
    if spec.time:
        missing_time = np.flatnonzero(np.isnan(frame[spec.time]) & ~null)
        if len(missing_time):
            raise InputError(f"{where(source, spec.time, row0 + int(missing_time[0]))}: the time is missing")
    dropped = int(null.sum())
    if dropped:
        frame = take_frame(frame, np.flatnonzero(~null))
    return frame, dropped


def frame_from_table(table: pa.Table) -> Frame:
    return {name: from_arrow(table.column(name)) for name in table.column_names}
