"""Where a training's time goes beside a neighbour (issue 34): `perf` on the reference
training (benchmarks/neighbour.py's), idle and beside a Python busy loop, for each
train.omp_wait, and on one plain HF body (GPT-2 with model.accel: off).

    python benchmarks/neighbour_profile.py [--sessions 20000] [--waits 300000,auto]

For each run: throughput, the CPU time the training process used per 1,000 sequences,
its context switches, and the share of its CPU samples inside libgomp (OpenMP's barrier
and wait loop: threads that have finished their part of a parallel region and wait for
the rest). Needs `perf` (linux-tools).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from neighbour import RAYREC, beside, reference_yaml, write_yaml  # noqa: E402


def profiled(data: str, out: str, config: str, work: str) -> dict:
    """`rayrec train` under perf record (CPU samples of the whole process tree) and perf
    stat (task clock, context switches)."""
    import json

    samples = os.path.join(work, "perf.data")
    stat = subprocess.run(["perf", "stat", "-x", ",", "-e", "task-clock,context-switches", "--",
                           "perf", "record", "-q", "-F", "499", "-o", samples, "--",
                           RAYREC, "train", "--data", data, "--out", out, "--overwrite", "--config", config],
                          capture_output=True, text=True)
    if stat.returncode != 0:
        raise RuntimeError(stat.stdout[-2000:] + stat.stderr[-2000:])
    counters = {}
    for line in stat.stderr.splitlines():
        parts = line.split(",")
        if len(parts) > 2 and parts[2] in ("task-clock", "context-switches"):
            counters[parts[2]] = float(parts[0])
    report = subprocess.run(["perf", "report", "-i", samples, "--no-children", "--sort", "dso", "--stdio", "-q"],
                            capture_output=True, text=True).stdout
    gomp = sum(float(m.group(1)) for m in re.finditer(r"([\d.]+)%\s+\S*libgomp", report))
    with open(os.path.join(out, "metrics.json")) as f:
        days = json.load(f)["days"]
    seqs = sum(d["train_sequences"] for d in days)
    return {"seq_s": seqs / sum(d["train_seconds"] for d in days),
            "cpu_ms_per_1k": counters.get("task-clock", 0) / seqs * 1000,
            "switches": counters.get("context-switches", 0), "libgomp": gomp}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=20_000)
    p.add_argument("--waits", default="300000,auto")
    a = p.parse_args()
    if not shutil.which("perf"):
        raise SystemExit("perf is not installed (linux-tools)")
    from train import write_dataset

    waits = [int(w) if w.isdigit() else w for w in a.waits.split(",")]
    print(f"{'body':>22} {'omp_wait':>8} {'neighbour':>9} {'seq/s':>7} {'CPU ms/1k seq':>13} "
          f"{'ctx switches':>12} {'in libgomp':>10}")
    with tempfile.TemporaryDirectory(prefix="rayrec-profile-") as work:
        data, _ = write_dataset(work, a.sessions)
        for body in ("XLNet-MLM (reference)", "GPT-2 CLM, accel off"):
            for wait in waits:
                config = reference_yaml(work, wait)
                if body.startswith("GPT-2"):
                    config = write_yaml(os.path.join(work, f"plain-{wait}.yaml"), {
                        "model": {"arch": "gpt2", "masking": "clm", "d_model": 64, "n_layer": 2, "n_head": 4,
                                  "max_len": 20, "accel": "off"},
                        "train": {"workers": 0, "epochs": 1, "batch_size": 256, "train_days": "1:1",
                                  "omp_wait": wait}})
                for kind in ("idle", "busy"):
                    with beside(kind, work):
                        r = profiled(data, os.path.join(work, "run"), config, work)
                    print(f"{body:>22} {wait!s:>8} {kind:>9} {r['seq_s']:>7,.0f} {r['cpu_ms_per_1k']:>13,.0f} "
                          f"{r['switches']:>12,.0f} {r['libgomp']:>9.1f}%", flush=True)


if __name__ == "__main__":
    main()
