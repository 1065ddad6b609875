"""Speed on a shared node (issue 34): training and serving idle and beside other processes,
back to back on the same machine, with the fraction of idle throughput each keeps.

    python benchmarks/neighbour.py [--sessions 20000] [--waits 300000,auto] [--no-t4r]

Three parts, each run once per `--waits` value (train.omp_wait / serve.omp_wait: 300000 is
libgomp's own spin, what rayrec ran before issue 34; auto is the default):
  1. The reference training (benchmarks/train.py's XLNet-MLM, one epoch, in-process, the
     threads `auto` picks) through `rayrec train` in a fresh process, idle, beside a Python
     busy loop and beside a `gzip -1` loop over a 64 MB file; Transformers4Rec 23.12 on the
     same files, idle and beside the same neighbours.
  2. Two `rayrec train` processes with their defaults (2 Ray Train workers each) started
     together on the same data, next to one alone: the summed throughput of the two.
  3. `rayrec serve`'s batched endpoint with its defaults (benchmarks/serve.py's quickstart
     model), 32 closed-loop clients, idle and beside the busy loop.
Every neighbour is a process this script starts and stops by its pid.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
RAYREC = os.path.join(os.path.dirname(sys.executable), "rayrec")


def compressible_file(work: str, mib: int = 64) -> str:
    """Text that gzip works on (random words), written once."""
    import numpy as np

    path = os.path.join(work, "neighbour.txt")
    words = np.array([f"w{i:05d}" for i in range(20_000)])
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        while f.tell() < mib << 20:
            f.write(" ".join(words[rng.integers(0, len(words), 100_000)]))
    return path


def neighbour_cmd(kind: str, work: str) -> list[str] | None:
    if kind == "idle":
        return None
    if kind == "busy":
        return [sys.executable, "-c", "while True: pass"]
    if kind == "gzip":
        path = compressible_file(work) if not os.path.exists(os.path.join(work, "neighbour.txt")) else \
            os.path.join(work, "neighbour.txt")
        return ["sh", "-c", f"while :; do gzip -1 -c {path} > /dev/null; done"]
    raise ValueError(f"unknown neighbour {kind!r}: idle, busy or gzip")


@contextmanager
def beside(kind: str, work: str):
    """Run the body beside a neighbour of `kind`, started in its own process group and
    stopped by that group's id (it and the gzip it runs, nothing else)."""
    cmd = neighbour_cmd(kind, work)
    proc = subprocess.Popen(cmd, start_new_session=True) if cmd else None
    time.sleep(0.5 if proc else 0)
    try:
        yield
    finally:
        if proc:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def write_yaml(path: str, sections: dict) -> str:
    import yaml

    with open(path, "w") as f:
        yaml.safe_dump(sections, f)
    return path


def reference_yaml(work: str, wait) -> str:
    """benchmarks/train.py's reference run as a `rayrec train` config (threads left to auto)."""
    import dataclasses

    from train import reference_model

    model = {k: v for k, v in dataclasses.asdict(reference_model()).items() if v is not None}
    train = dict(workers=0, epochs=1, batch_size=256, lr=2e-3, grad_clip=1.0, weight_decay=0.0,
                 train_days="1:1", eval_split="valid", seed=0, omp_wait=wait)
    return write_yaml(os.path.join(work, f"reference-{wait}.yaml"), {"model": model, "train": train})


def rayrec_train(data: str, out: str, config: str | None) -> subprocess.Popen:
    cmd = [RAYREC, "train", "--data", data, "--out", out, "--overwrite"] + (["--config", config] if config else [])
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def throughput(proc: subprocess.Popen, out: str) -> float:
    text, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"rayrec train failed:\n{text[-3000:]}")
    with open(os.path.join(out, "metrics.json")) as f:
        days = json.load(f)["days"]
    return sum(d["train_sequences"] for d in days) / sum(d["train_seconds"] for d in days)


def training(work: str, data: str, waits: list, kinds: list[str], t4r: bool) -> list[dict]:
    from rayrec.threads import usable_cores
    from train import t4r_run

    rows = []
    for wait in waits:
        config = reference_yaml(work, wait)
        row = {"system": "rayrec", "omp_wait": wait}
        for kind in kinds:
            with beside(kind, work):
                out = os.path.join(work, "ref-run")
                row[kind] = throughput(rayrec_train(data, out, config), out)
        rows.append(row)
    if t4r:
        row = {"system": "Transformers4Rec", "omp_wait": "-"}
        for kind in kinds:
            with beside(kind, work):
                peer = t4r_run(work, usable_cores(), 2e-3)
            if peer is None:
                return rows
            row[kind] = peer["train_sequences_per_s"]
        rows.append(row)
    return rows


def two_trainings(work: str, data: str, waits: list) -> list[dict]:
    """`rayrec train` with its defaults, one alone, then two started together."""
    rows = []
    for wait in waits:
        config = write_yaml(os.path.join(work, f"defaults-{wait}.yaml"), {"train": {"omp_wait": wait}})
        alone = throughput(rayrec_train(data, os.path.join(work, "alone"), config), os.path.join(work, "alone"))
        outs = [os.path.join(work, f"pair-{i}") for i in range(2)]
        procs = [rayrec_train(data, out, config) for out in outs]
        pair = [throughput(p, out) for p, out in zip(procs, outs)]
        rows.append({"omp_wait": wait, "alone": alone, "pair": pair, "summed": sum(pair) / alone})
    return rows


def serving(work: str, waits: list, seconds: float) -> list[dict]:
    from serve import build_model, closed_loop

    from rayrec.quickstart import free_port
    from rayrec.raylocal import init_ray
    from rayrec.serve.app import ServeConfig, start, stop

    run, sessions = build_model(work, "quickstart")
    bodies = [json.dumps({"events": s, "k": 10}).encode() for s in sessions]
    init_ray(log_to_driver=False)
    rows = []
    for wait in waits:
        port = free_port()
        start(run, ServeConfig(port=port, omp_wait=wait, max_queued_requests=-1, max_waiting_sessions=None))
        try:
            closed_loop(port, bodies, 4, 1.0)           # warm-up
            row = {"omp_wait": wait}
            for kind in ("idle", "busy"):
                with beside(kind, work):
                    r = closed_loop(port, bodies, 32, seconds)
                row[kind] = r["throughput"]
                row[f"{kind}_errors"] = r["errors"]
            rows.append(row)
        finally:
            stop()
    return rows


def kept(row: dict, kind: str) -> str:
    return f"{row[kind]:>9,.0f} {100 * row[kind] / row['idle']:>5.1f}%"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=20_000)
    p.add_argument("--waits", default="300000,auto", help="omp_wait values to compare, comma-separated")
    p.add_argument("--neighbours", default="busy,gzip")
    p.add_argument("--seconds", type=float, default=10.0, help="per serving load")
    p.add_argument("--no-t4r", action="store_true")
    p.add_argument("--parts", default="train,two,serve", help="which parts to run, comma-separated")
    a = p.parse_args()
    waits = [int(w) if w.isdigit() else w for w in a.waits.split(",")]
    kinds = ["idle", *a.neighbours.split(",")]
    parts = a.parts.split(",")
    from train import write_dataset

    result = {"sessions": a.sessions, "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="rayrec-neighbour-") as work:
        data, _ = write_dataset(work, a.sessions)
        if "train" in parts:
            rows = result["train"] = training(work, data, waits, kinds, not a.no_t4r)
            print(f"\nreference training (XLNet-MLM d64, {a.sessions:,} sessions, 1 epoch), sequences/s "
                  f"and the fraction of idle kept")
            print(f"{'system':>16} {'omp_wait':>8} {'idle':>9} " + " ".join(f"{k:>16}" for k in kinds[1:]))
            for r in rows:
                print(f"{r['system']:>16} {r['omp_wait']!s:>8} {r['idle']:>9,.0f} " +
                      " ".join(f"{kept(r, k):>16}" for k in kinds[1:]))
        if "two" in parts:
            rows = result["two"] = two_trainings(work, data, waits)
            print("\ntwo `rayrec train` (defaults) together on one node, sequences/s")
            print(f"{'omp_wait':>8} {'one alone':>10} {'first':>8} {'second':>8} {'summed / alone':>15}")
            for r in rows:
                print(f"{r['omp_wait']!s:>8} {r['alone']:>10,.0f} {r['pair'][0]:>8,.0f} {r['pair'][1]:>8,.0f} "
                      f"{100 * r['summed']:>14.1f}%")
        if "serve" in parts:
            rows = result["serve"] = serving(work, waits, a.seconds)
            print("\n`rayrec serve` batched endpoint (defaults), 32 closed-loop clients, answers/s")
            print(f"{'omp_wait':>8} {'idle':>9} {'busy loop':>16}")
            for r in rows:
                print(f"{r['omp_wait']!s:>8} {r['idle']:>9,.0f} {kept(r, 'busy'):>16}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
