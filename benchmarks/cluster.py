"""Issue 12's figures: job-submission overhead, the ETL on 2 Ray nodes vs 1, and the
training loader reading from an S3-compatible server vs local disk.

    sudo python benchmarks/cluster.py [--events 4000000] [--parts submit,etl,loader]

`submit` and `etl` run on real `ray start` clusters in network namespaces (tests/netcluster.py:
root needed); `loader` on moto at 127.0.0.1. Every part prints a table; the two simulated
nodes share this machine's cores, so the ETL comparison is of equal total CPUs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from netcluster import NetnsCluster  # noqa: E402
from s3server import S3Server  # noqa: E402


def table(head: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def timed_lines(cmd: list[str], env: dict, cwd: str) -> tuple[float, list[tuple[float, str]]]:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = [(time.perf_counter() - start, line.rstrip()) for line in proc.stdout]
    proc.wait()
    return time.perf_counter() - start, lines


def bench_submit(work: str, repeats: int = 3) -> str:
    """Seconds from `rayrec submit` to the job's first log line and from its last line to
    the client's exit, next to the same command run directly on the head."""
    rows = []
    with NetnsCluster(os.path.join(work, "submit")) as c:
        command = ["rayrec", "synth", "--out", os.path.join(c.tmp, "s"), "--events", "20000", "--no-ceiling"]
        for i in range(repeats):
            direct, _ = timed_lines(c.command(command), c.env(), c.tmp)
            total, lines = timed_lines(c.command(["rayrec", "submit", "--address", c.dashboard, "--", *command]),
                                       c.env(), c.tmp)
            follows = next(i for i, (_, t) in enumerate(lines) if t.startswith("its log follows"))
            job = [(t, text) for t, text in lines[follows + 1:] if not text.startswith("job ")]
            first, last = job[0][0], job[-1][0]
            rows.append([i + 1, f"{direct:.2f}", f"{total:.2f}", f"{first:.2f}", f"{total - last:.2f}",
                         f"{total / direct:.2f}x"])
    return table(["run", "direct s", "submit s (whole)", "to first job line s", "job end to exit s", "ratio"], rows)


def bench_etl(work: str, events: int) -> str:
    """The same 4M-event file through `rayrec etl --address` on one node with 2 CPUs and on
    two nodes with 1 CPU each (equal CPUs in all; both share this machine's 2 cores)."""
    raw = os.path.join(work, "raw4m")
    if not os.path.exists(os.path.join(raw, "events.parquet")):
        subprocess.run([os.path.join(os.path.dirname(sys.executable), "rayrec"), "synth", "--out", raw,
                        "--events", str(events), "--days", "7", "--items", "20000", "--no-ceiling"], check=True)
    rows = []
    for label, cpus in (("1 node x 2 CPUs", (2, 0)), ("2 nodes x 1 CPU", (1, 1))):
        with NetnsCluster(os.path.join(work, label.replace(" ", "")), cpus=cpus) as c:
            out = os.path.join(c.tmp, "data")
            cmd = ["rayrec", "etl", "--input", os.path.join(raw, "events.parquet"), "--out", out,
                   "--address", c.gcs]
            wall, _ = timed_lines(c.command(cmd), c.env(), c.tmp)
            with open(os.path.join(out, "report.json")) as f:
                r = json.load(f)
            rows.append([label, f"{r['events']:,}", f"{r['sessions']:,}", f"{wall:.1f}", f"{r['seconds']:.1f}",
                         f"{r['shuffled_bytes'] / 2**20:.1f}", json.dumps(r["phase_seconds"])])
    return table(["cluster", "events", "sessions", "command s", "etl s", "shuffled MiB", "phases s"], rows)


def bench_loader(work: str, events: int) -> str:
    """Sessions/s of the training loader (one worker's `load_batch`) on a day's train split,
    from moto's S3 server vs local disk, next to what training consumes per second."""
    import torch

    from rayrec.cli import main
    from rayrec.models.features import resolve_features
    from rayrec.models.config import ModelConfig
    from rayrec.schema import Schema
    from rayrec.storage import _filesystem, locate
    from rayrec.train.data import load_batch

    raw = os.path.join(work, "raw4m")
    data = os.path.join(work, "data4m")
    if not os.path.exists(os.path.join(data, "schema.json")):
        assert main(["etl", "--input", os.path.join(raw, "events.parquet"), "--out", data, "--overwrite"]) == 0
    model = ModelConfig(arch="gpt2", masking="clm", d_model=64, n_layer=2, n_head=4)
    features = resolve_features(Schema.load(data), model)
    rows = []
    with S3Server() as s3:
        os.environ.update(s3.env)
        _filesystem.cache_clear()
        bucket = s3.make_bucket("loader")
        locate(f"{bucket}/data").upload(data)
        locate(f"{bucket}/data/_rayrec_complete.json").write_json({"format_version": 1, "files": []})
        for where, root in (("local disk", data), ("S3 (moto, 127.0.0.1)", f"{bucket}/data")):
            path = f"{root}/1/train.parquet" if "://" in root else os.path.join(root, "1", "train.parquet")
            times, n = [], 0
            for _ in range(3):
                t = time.perf_counter()
                batch = load_batch(path, features, [], 20, rank=0, world=2)
                times.append(time.perf_counter() - t)
                n = len(batch[features[0].name])
            rows.append([where, f"{n:,}", f"{statistics.median(times):.3f}", f"{n / statistics.median(times):,.0f}"])
    torch.set_num_threads(2)
    run = os.path.join(work, "loader-run")
    t = time.perf_counter()
    assert main(["train", "--data", data, "--out", run, "--workers", "0", "--epochs", "1", "--train-days", "1:1",
                 "--arch", "gpt2", "--d-model", "64", "--n-layer", "2", "--n-head", "4", "--batch-size", "256",
                 "--overwrite"]) == 0
    with open(os.path.join(run, "metrics.json")) as f:
        rate = json.load(f)["days"][0]["sequences_per_s"]
    rows.append(["training (gpt2-clm d64, in-process, 2 threads)", "", f"{time.perf_counter() - t:.1f}",
                 f"{rate:,.0f}"])
    for r in rows[:2]:
        r.append(f"{float(r[3].replace(',', '')) / rate:.0f}x")
    rows[2].append("1x")
    return table(["reads from", "sessions (one of 2 workers)", "seconds", "sessions/s", "vs training"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=4_000_000)
    ap.add_argument("--parts", default="submit,etl,loader")
    ap.add_argument("--work", default=None)
    a = ap.parse_args()
    work = a.work or tempfile.mkdtemp(prefix="rayrec-bench-cluster-")
    parts = a.parts.split(",")
    if "submit" in parts:
        print("## submission overhead\n" + bench_submit(work), flush=True)
    if "etl" in parts:
        print(f"## ETL, {a.events:,} events: 2 nodes vs 1\n" + bench_etl(work, a.events), flush=True)
    if "loader" in parts:
        print("## training loader: S3 vs local disk\n" + bench_loader(work, a.events), flush=True)


if __name__ == "__main__":
    main()
