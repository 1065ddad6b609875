"""`rayrec etl`: fit the workflow in one distributed pass, then shuffle events by session
and write day-partitioned session parquet, atomically.

Pass 1 reads only the item and time columns (vocabulary counts, first time, row count).
Pass 2 shuffles all events by session key so that every session sits in one partition,
groups each partition with numpy, and writes per-partition parts; the parts of each
(day, split) are then streamed into one file. Memory is bounded by the partition size.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import time

import dask
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from rayrec.etl.config import EtlConfig
from rayrec.etl.io import canonical_keys, check_columns, expand_inputs, read_events, to_seconds
from rayrec.etl.workflow import SessionWorkflow
from rayrec.files import atomic_directory

SPLITS = ("train", "valid", "test")
# One row per written (day, split) part, plus one "_report" row of counts per partition.
_ROW_META = {"day": "int64", "split": "object", "sessions": "int64", "events": "int64",
             "events_without_session": "int64", "sessions_too_short": "int64"}


def fit_workflow(ddf, config: EtlConfig) -> tuple[SessionWorkflow, int]:
    """One pass over item and time columns: item counts, earliest time, number of events."""
    items = ddf[config.item_col].map_partitions(canonical_keys, meta=(config.item_col, "string"))
    seconds = ddf[config.time_col].map_partitions(
        lambda s: pd.Series(to_seconds(s, config.time_col), index=s.index), meta=(config.time_col, "f8"))
    counts, min_time, n_events = dask.compute(items.value_counts(dropna=True), seconds.min(), ddf.shape[0])
    if n_events == 0:
        raise ValueError("the input holds no events (0 rows); refusing to write an empty dataset")
    return SessionWorkflow.from_stats(config, counts, float(min_time)), int(n_events)


def split_of(keys: np.ndarray, config: EtlConfig) -> np.ndarray:
    """Deterministic random split per session key: independent of partitioning and order."""
    h = pd.util.hash_array(np.asarray(keys, dtype=object).astype(str), hash_key=f"rayrec{config.seed:010d}"[:16])
    u = (h % np.uint64(1_000_000)).astype(np.float64) / 1e6
    return np.where(u < config.test_fraction, 2, np.where(u < config.test_fraction + config.valid_fraction, 1, 0))


def _write_partition(events: pd.DataFrame, workflow: SessionWorkflow, parts_dir: str,
                     partition_info=None) -> pd.DataFrame:
    table, report = workflow.transform_partition(events)
    pid = partition_info["number"] if partition_info else 0
    split = split_of(table.column(0).to_numpy(zero_copy_only=False), workflow.config)
    days = table.column("day_index").to_numpy()
    rows = []
    for day in np.unique(days):
        for s, name in enumerate(SPLITS):
            idx = np.flatnonzero((days == day) & (split == s))
            if len(idx):
                d = os.path.join(parts_dir, str(int(day)), name)
                os.makedirs(d, exist_ok=True)
                pq.write_table(table.take(pa.array(idx)), os.path.join(d, f"part-{pid:05d}.parquet"))
                rows.append({"day": int(day), "split": name, "sessions": len(idx)})
    rows.append({"day": -1, "split": "_report", **report})
    return pd.DataFrame(rows, columns=list(_ROW_META)).fillna(0).astype(_ROW_META)


def _combine_parts(parts_dir: str, out_dir: str, arrow_schema: pa.Schema) -> None:
    """Stream each (day, split)'s parts into out_dir/<day>/<split>.parquet; empty splits get
    an empty file, so every day has all three."""
    for day_dir in sorted(glob.glob(os.path.join(parts_dir, "*")), key=lambda p: int(os.path.basename(p))):
        day = os.path.basename(day_dir)
        os.makedirs(os.path.join(out_dir, day))
        for name in SPLITS:
            target = os.path.join(out_dir, day, f"{name}.parquet")
            with pq.ParquetWriter(target, arrow_schema) as writer:
                for part in sorted(glob.glob(os.path.join(day_dir, name, "*.parquet"))):
                    writer.write_table(pq.read_table(part).cast(arrow_schema))
    shutil.rmtree(parts_dir)


def run_etl(inputs: list[str], out: str, config: EtlConfig, overwrite: bool = False) -> dict:
    """Run the whole ETL; returns the report also written to OUT/report.json."""
    started = time.perf_counter()
    files = expand_inputs(inputs)
    cols = [config.session_col, config.item_col, config.time_col]
    if len(set(cols)) != 3:
        raise ValueError(f"session, item and time columns must differ, got {cols}")
    check_columns(files, cols)
    ddf = read_events(files, cols, string_cols=[config.session_col, config.item_col], blocksize=config.blocksize)
    workflow, n_events = fit_workflow(ddf, config)

    with atomic_directory(out, overwrite=overwrite) as tmp:
        parts = os.path.join(tmp, "_parts")
        shuffled = ddf.shuffle(on=config.session_col, npartitions=max(1, ddf.npartitions))
        meta = pd.DataFrame({k: pd.Series(dtype=v) for k, v in _ROW_META.items()})
        rows = shuffled.map_partitions(_write_partition, workflow, parts, meta=meta).compute()
        written = rows[rows["split"] != "_report"]
        if written.empty:
            raise ValueError(f"no session has >= {config.min_session_length} events; nothing to write")
        arrow_schema = _common_schema(parts)
        _combine_parts(parts, tmp, arrow_schema)
        session_dtype = "string" if pa.types.is_string(arrow_schema.field(0).type) or \
            pa.types.is_large_string(arrow_schema.field(0).type) else str(arrow_schema.field(0).type)
        workflow.output_schema(session_dtype).save(tmp)
        workflow.save(os.path.join(tmp, "workflow"))
        sums = rows[rows["split"] == "_report"].drop(columns=["day", "split"]).sum()
        report = {
            "inputs": files, "events": n_events,
            "events_without_session": int(sums.get("events_without_session", 0)),
            "sessions_grouped": int(sums.get("sessions", 0)),
            "sessions_too_short": int(sums.get("sessions_too_short", 0)),
            "items": len(workflow.vocab),
            "sessions_by_day": {str(d): {s: int(v) for s, v in g.groupby("split")["sessions"].sum().items()}
                                for d, g in written.groupby("day")},
            "seconds": round(time.perf_counter() - started, 2),
        }
        with open(os.path.join(tmp, "report.json"), "w") as f:
            json.dump(report, f, indent=2)
    return report


def _common_schema(parts_dir: str) -> pa.Schema:
    """The arrow schema every part was written with (all parts come from one transform)."""
    first = sorted(glob.glob(os.path.join(parts_dir, "*", "*", "*.parquet")))[0]
    return pq.read_schema(first)
