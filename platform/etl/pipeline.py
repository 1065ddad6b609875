"""`rayrec etl`: raw event files -> DIR/<day>/{train,valid,test}.parquet, schema, workflow.

1. Stage: every input piece is read, checked and parsed (`Workflow.prepare`) and its rows
   are written to one of B buckets by a hash of the session key: a shuffle through disk,
   so that each bucket holds whole sessions and memory is bounded by the bucket size.
2. Fit: one parallel pass over the buckets per fit level; partial statistics are combined
   on the client.
3. Transform: each bucket goes through the fitted ops and is written per day.
4. Combine: each day's parts are split into train/valid/test and streamed into one file.

Input and output are local paths or storage URIs (`rayrec.storage`); tasks get URIs and
resolve them on their own worker. The output is written atomically (`files.output_location`):
locally under a temporary directory renamed into place, on an object store under its
prefix with a manifest written last, so an interrupted run leaves no dataset that looks
whole. Staged buckets and day parts live under the output's `_tmp/` until they are merged.
"""
from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from rayrec.etl.config import EtlConfig, parse_bytes
from rayrec.etl.inputs import InputError, frame_from_table
from rayrec.etl.reading import Piece, check_columns, csv_types, expand_inputs, first_row, plan_pieces, read_piece
from rayrec.etl.workflow import Workflow, to_table
from rayrec.files import output_location
from rayrec.rundir import workflow_of
from rayrec.storage import display, join, locate, parquet_writer, write_parquet

SPLITS = ("train", "valid", "test")
TEMP_COMPRESSION = "lz4"   # staged and intermediate files are read back at once: speed over size


# --- tasks (run on Dask workers) ------------------------------------------------------
def stage_piece(i: int, piece: Piece, wf: Workflow, types: dict | None, n_buckets: int, stage: str,
                check_types: bool) -> dict:
    """Read, check and parse one piece; write its rows to buckets by session-key hash."""
    table = read_piece(piece, wf.raw_columns(), types)
    try:
        frame, dropped = wf.prepare(frame_from_table(table), display(piece.path), 0)
    except InputError:   # name the row in file coordinates (this reads the file up to the piece)
        frame, dropped = wf.prepare(frame_from_table(table), display(piece.path), first_row(piece))
    if check_types:
        wf.check_input_types(frame, display(piece.path))
    prepared = to_table(frame)
    if prepared.num_rows:
        bucket = bucket_of(prepared.column(wf.session_key), n_buckets) if wf.session_key else \
            np.full(prepared.num_rows, i % n_buckets)
        order = np.argsort(bucket, kind="stable")
        bounds = np.searchsorted(bucket[order], np.arange(n_buckets + 1))
        for b in range(n_buckets):
            if bounds[b + 1] > bounds[b]:
                write_parquet(prepared.take(pa.array(order[bounds[b]:bounds[b + 1]])),
                              join(stage, f"b{b:05d}", f"p{i:06d}.parquet"), compression=TEMP_COMPRESSION)
    return {"rows": table.num_rows, "dropped": dropped, "types": {c: str(v.type) for c, v in zip(
        prepared.column_names, prepared.columns)}}


def bucket_of(keys: pa.ChunkedArray, n: int) -> np.ndarray:
    """Bucket per row from a hash of the key value: the same key lands in the same bucket
    from every file and piece."""
    enc = keys.combine_chunks().dictionary_encode()
    uniques = enc.dictionary.to_numpy(zero_copy_only=False)
    h = pd.util.hash_array(uniques.astype(object) if uniques.dtype.kind in "OUS" else uniques)
    return (h % np.uint64(n)).astype(np.int64)[enc.indices.to_numpy(zero_copy_only=False)]


def _load_bucket(path: str, columns: list[str] | None = None) -> dict:
    loc = locate(path)
    return frame_from_table(pa.concat_tables([pq.read_table(f, columns=columns, filesystem=loc.fs)
                                              for f in loc.files(".parquet")]))


def fit_bucket(path: str, wf: Workflow, level: int) -> list:
    return wf.run(_load_bucket(path, wf.fit_plan(level)[1]), level=level)[1]


def transform_bucket(path: str, wf: Workflow, parts: str, day_column: str) -> dict:
    counters: dict = {}
    out = to_table(wf.run(_load_bucket(path), counters=counters)[0])
    if day_column not in out.column_names:
        raise ValueError(f"the workflow's output has no day column {day_column!r} (columns: {out.column_names}); "
                         "add a DayIndex op or set etl.day_column")
    days = out.column(day_column).to_numpy()
    name = path.rstrip("/").rpartition("/")[2]
    for day in np.unique(days):
        write_parquet(out.filter(pa.array(days == day)), join(parts, str(int(day)), f"{name}.parquet"),
                      compression=TEMP_COMPRESSION)
    return {"counters": counters, "rows": out.num_rows}


def combine_day(day_dir: str, out_dir: str, cfg: EtlConfig, split_key: str | None, time_col: str | None) -> dict:
    """Split one day's sessions and stream them into <day>/{train,valid,test}.parquet;
    empty splits get an empty file, so that every day has all three."""
    loc = locate(day_dir)
    parts = loc.files(".parquet")
    schema = pq.read_schema(parts[0], filesystem=loc.fs)
    cut = None
    if cfg.split == "time":
        times = np.concatenate([pq.read_table(p, columns=[time_col], filesystem=loc.fs).column(0).to_numpy()
                                for p in parts])
        cut = np.quantile(times, [1 - cfg.valid_fraction - cfg.test_fraction, 1 - cfg.test_fraction])
    day = day_dir.rstrip("/").rpartition("/")[2]
    writers = {s: parquet_writer(join(out_dir, day, f"{s}.parquet"), schema) for s in SPLITS}
    counts = dict.fromkeys(SPLITS, 0)
    try:
        for p in parts:
            t = pq.read_table(p, filesystem=loc.fs).cast(schema)
            if cfg.split == "time":
                x = t.column(time_col).to_numpy()
                which = np.where(x < cut[0], 0, np.where(x < cut[1], 1, 2))
            else:
                which = split_of(t.column(split_key), cfg)
            for s, name in enumerate(SPLITS):
                sel = t.filter(pa.array(which == s))
                if sel.num_rows:
                    writers[name].write_table(sel)
                    counts[name] += sel.num_rows
    finally:
        for w in writers.values():
            w.close()
    return {day: counts}


def split_of(keys: pa.ChunkedArray, cfg: EtlConfig) -> np.ndarray:
    """Seeded random split by key: independent of partitioning and order."""
    values = keys.to_numpy()
    h = pd.util.hash_array(values.astype(object) if values.dtype.kind in "OUS" else values,
                           hash_key=f"rayrec{cfg.seed:010d}"[:16])
    u = (h % np.uint64(1_000_000)).astype(np.float64) / 1e6
    return np.where(u < cfg.test_fraction, 2, np.where(u < cfg.test_fraction + cfg.valid_fraction, 1, 0))


# --- driver ---------------------------------------------------------------------------
def run_etl(inputs: list[str], out: str, config: EtlConfig, workflow: Workflow, overwrite: bool = False,
            fitted: bool = False, progress=print, address: str | None = None) -> dict:
    """Run the whole ETL (fit unless `fitted`); returns the report also in OUT/report.json.
    `address` (or running inside a Ray job) puts the Dask work on that Ray cluster's nodes."""
    from rayrec.etl.engine import check_gpu, dask_client

    started = time.perf_counter()
    if config.device == "gpu":
        check_gpu()
    files = expand_inputs(inputs)
    check_columns(files, workflow.raw_columns())
    types = _types(files, workflow)
    sizes = {f: locate(f).size() for f in files}
    total = sum(sizes[f] * (4 if display(f).endswith((".parquet", ".pq")) else 1) for f in files)
    with output_location(out, overwrite=overwrite) as root, \
            dask_client(config.scheduler, config.device, config.workers, address) as client:
        workers = client.scheduler_info()["workers"]
        slots = sum(w["nthreads"] for w in workers.values())
        progress(f"on {len(workers)} Dask worker(s), {slots} thread(s) in all")
        pieces = plan_pieces(files, _blocksize(sum(sizes.values()), parse_bytes(config.blocksize), slots))
        # buckets small enough for a worker's memory, in a multiple of the worker threads
        n_buckets = math.ceil(math.ceil(total / parse_bytes(config.partition_size)) / slots) * slots
        stage, parts = root.child("_tmp", "stage").uri, root.child("_tmp", "parts").uri
        phases = {"start": time.perf_counter() - started}
        mark = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal mark
            phases[name] = time.perf_counter() - mark
            mark = time.perf_counter()

        wf = client.scatter(workflow, broadcast=True)
        progress(f"stage: {len(pieces)} pieces -> {n_buckets} session buckets")
        staged = client.gather(client.map(stage_piece, range(len(pieces)), pieces, wf=wf, types=types,
                                          n_buckets=n_buckets, stage=stage, check_types=fitted, pure=False))
        n_events = sum(s["rows"] for s in staged)
        if n_events == 0:
            raise InputError(f"{', '.join(map(display, files))}: the input holds no events (0 rows); nothing to write")
        _check_types(staged, pieces, workflow, fitted)
        lap("stage")
        buckets = [join(stage, i.base_name) for i in locate(stage).list() if i.type.name == "Directory"]
        for level in range(0 if fitted else workflow.fit_level_count()):
            progress(f"fit: level {level + 1}/{workflow.fit_level_count()} over {len(buckets)} buckets")
            partials = client.gather(client.map(fit_bucket, buckets, wf=wf, level=level, pure=False))
            workflow.combine_level(level, partials)
            wf = client.scatter(workflow, broadcast=True)
            lap(f"fit_{level + 1}")
        progress("transform and write")
        done = client.gather(client.map(transform_bucket, buckets, wf=wf, parts=parts,
                                        day_column=config.day_column, pure=False))
        if not locate(parts).names():
            raise InputError(f"no session survived the workflow's filters: {_sum_counters(done)}; nothing to write")
        lap("transform")
        schema = workflow.output_schema()
        key = workflow.session_key if workflow.session_key in schema.names else schema.names[0]
        time_col = _time_column(schema, workflow) if config.split == "time" else None
        days = sorted(locate(parts).names(), key=int)
        by_day = {}
        for r in client.gather(client.map(combine_day, [join(parts, d) for d in days], out_dir=root.uri,
                                          cfg=config, split_key=key, time_col=time_col, pure=False)):
            by_day.update(r)
        staged_bytes = sum(i.size for i in locate(stage).list(recursive=True) if i.type.name == "File")
        root.child("_tmp").delete()
        lap("combine")
        schema.save(root.uri)
        workflow.save(workflow_of(root.uri))
        report = {
            "inputs": [display(f) for f in files], "events": n_events,
            "events_without_session": sum(s["dropped"] for s in staged),
            "rows_removed_by_op": _sum_counters(done),
            "sessions": sum(sum(v.values()) for v in by_day.values()),
            "sessions_by_day": {d: by_day[d] for d in sorted(by_day, key=int)},
            "pieces": len(pieces), "buckets": n_buckets,
            "seconds": round(time.perf_counter() - started, 2),
            "phase_seconds": {k: round(v, 2) for k, v in phases.items()},
            "shuffled_bytes": staged_bytes,   # the staged buckets: what crosses nodes on a cluster
        }
        root.child("report.json").write_json(report)
    return report


def _blocksize(size: int, limit: int, slots: int) -> int:
    """At most `limit` bytes per piece, in a number of pieces that keeps every slot busy to
    the end (a multiple of the slots)."""
    pieces = max(1, math.ceil(size / limit))
    pieces = math.ceil(pieces / slots) * slots
    return max(1 << 16, math.ceil(size / pieces))


def _types(files: list[str], wf: Workflow) -> dict | None:
    """CSV column types: the fitted ones when transforming with a fitted workflow."""
    csvs = [f for f in files if not display(f).endswith((".parquet", ".pq"))]
    if not csvs:
        return None
    sep = "\t" if display(csvs[0]).endswith((".tsv", ".tab")) else ","
    types = csv_types(csvs[0], sep, wf.raw_columns(), wf.input.numeric)
    if wf.input.time and wf.input.time in types and pa.types.is_timestamp(types[wf.input.time]):
        types[wf.input.time] = pa.string()
    return types


def _check_types(staged: list[dict], pieces: list[Piece], wf: Workflow, fitted: bool) -> None:
    """Every piece must agree on column types; the first piece's become the fitted ones."""
    first = next(s for s in staged if s["rows"])
    for s, p in zip(staged, pieces):
        diffs = [f"{c}: {t} vs {first['types'][c]}" for c, t in s["types"].items()
                 if s["rows"] and t != first["types"].get(c) and "null" not in (t, first["types"].get(c))]
        if diffs:
            raise InputError(f"{display(p.path)}: column types differ from the first input's: {'; '.join(diffs)}")
    if not fitted:
        wf.input_types = {c: _type_name(t) for c, t in first["types"].items()}


def _type_name(t: str) -> str:
    return "string" if t == "large_string" else t


def _time_column(schema, wf: Workflow) -> str:
    for c in schema.columns:
        if "time" in c.tags and not c.is_list and c.dtype.startswith("float"):
            return c.name
    raise ValueError("split: time needs a scalar time column in the output (e.g. Groupby `first` of the time)")


def _sum_counters(done: list[dict]) -> dict:
    total: dict = {}
    for d in done:
        for k, v in d["counters"].items():
            total[k] = total.get(k, 0) + v
    return dict(sorted(total.items()))


