"""Reading raw event files into Dask, and the value conversions every stage agrees on.

Raw ids are compared as canonical strings (an integer id read from CSV, parquet or a JSON
request is the same key "1004856"), and times as float unix seconds.
"""
from __future__ import annotations

import glob
import os
from datetime import datetime, timezone

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

_FORMATS = {".parquet": ("parquet", None), ".pq": ("parquet", None),
            ".csv": ("csv", ","), ".tsv": ("csv", "\t"), ".tab": ("csv", "\t")}


def expand_inputs(paths: list[str]) -> list[str]:
    """Files named, matched by globs, or inside directories; sorted, each at most once."""
    files: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            found = sorted(f for f in glob.glob(os.path.join(p, "*")) if _suffix(f) in _FORMATS)
        else:
            found = sorted(glob.glob(p))
        if not found:
            raise FileNotFoundError(f"{p}: no input files found (expected .parquet, .csv or .tsv)")
        files += found
    for f in files:
        if _suffix(f) not in _FORMATS:
            raise ValueError(f"{f}: unknown input format; expected one of {sorted(_FORMATS)}")
    return list(dict.fromkeys(files))


def _suffix(path: str) -> str:
    return os.path.splitext(path)[1].lower()


def file_columns(path: str) -> list[str]:
    kind, sep = _FORMATS[_suffix(path)]
    if kind == "parquet":
        return pq.read_schema(path).names
    with open(path, newline="") as f:
        header = f.readline().rstrip("\r\n")
    return [c.strip().strip('"') for c in header.split(sep)] if header else []


def check_columns(files: list[str], required: list[str]) -> None:
    """Fail before any work if a file lacks a column, naming the file and the column."""
    for f in files:
        cols = file_columns(f)
        missing = [c for c in required if c not in cols]
        if missing:
            raise ValueError(f"{f}: missing required column(s) {missing}; the file has {cols}")


def read_events(files: list[str], columns: list[str], string_cols: list[str],
                blocksize: str = "64MB") -> dd.DataFrame:
    """One Dask frame over all files, only `columns`; id columns read from text stay strings."""
    frames = []
    for kind, sep in sorted({_FORMATS[_suffix(f)] for f in files}, key=str):
        group = [f for f in files if _FORMATS[_suffix(f)] == (kind, sep)]
        if kind == "parquet":
            frames.append(dd.read_parquet(group, columns=columns))
        else:
            frames.append(dd.read_csv(group, sep=sep, usecols=columns, blocksize=blocksize,
                                      dtype={c: "string" for c in string_cols}))
    return frames[0] if len(frames) == 1 else dd.concat(frames)


def canonical_keys(values: pd.Series) -> pd.Series:
    """Raw ids as strings; integral floats (ints read with nulls) lose their '.0'; nulls stay null."""
    if pd.api.types.is_float_dtype(values.dtype):
        finite = values.dropna()
        if (finite == np.floor(finite)).all():
            values = values.astype("Int64")
    return values.astype("string")


def canonical_key(value) -> str | None:
    """The same canonical form for one value from a JSON request."""
    if value is None or isinstance(value, bool):
        return None if value is None else str(value)
    if isinstance(value, float):
        if value != value:
            return None
        return str(int(value)) if value.is_integer() else str(value)
    return str(value)


def to_seconds(values: pd.Series, column: str) -> np.ndarray:
    """Times as float unix seconds: numbers are taken as seconds, strings parsed (naive = UTC)."""
    if pd.api.types.is_numeric_dtype(values.dtype):
        out = values.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        if not pd.api.types.is_datetime64_any_dtype(values.dtype):
            try:
                values = pd.to_datetime(values, utc=True)
            except (ValueError, TypeError) as e:
                raise ValueError(f"column {column!r}: cannot parse times ({e})") from None
        elif values.dt.tz is None:
            values = values.dt.tz_localize("UTC")
        out = ((values - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy(
            dtype=np.float64, na_value=np.nan)
    if np.isnan(out).any():
        row = int(np.flatnonzero(np.isnan(out))[0])
        raise ValueError(f"column {column!r}: missing time at row {row} of a partition")
    return out


def time_to_seconds(value, column: str) -> float:
    """One time from a JSON request, parsed as `to_seconds` parses a column."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        for suffix in (" UTC", "UTC", "Z"):
            if text.endswith(suffix):
                text = text[: -len(suffix)].strip() + "+00:00"
                break
        try:
            t = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{column}: cannot parse time {value!r}") from None
        if t.tzinfo is None:
            t = t.replace(tzinfo=timezone.utc)
        return t.timestamp()
    raise ValueError(f"{column}: expected a time string or unix seconds, got {value!r}")
