"""ETL figures: the REES46 pipeline (examples/rees46/etl.yaml) on synthetic REES46 events.

For each size: events/s of `rayrec etl` (input read through output written, the figure
report.json calls `seconds`), peak RSS summed over the whole process tree, and the floor of
merely reading the input and writing the output. At --nvt-size, NVTabular 23.08 runs the
same pipeline on the same file in the same run (../shared/peers/nvtabular/bench.py; its
`seconds` also covers read through write). Last, the online transform latency of one
20-event session with the fitted workflow.

    python benchmarks/etl.py --sizes 1000000 4000000 10000000 --nvt-size 1000000
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform as host
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "examples", "rees46", "etl.yaml")
PEER = os.path.join(ROOT, "..", "shared", "peers", "nvtabular")


class PeakRss:
    """Samples the summed RSS of a process and all its children every 50 ms."""

    def __init__(self, pid: int):
        self.proc, self.peak, self._stop = psutil.Process(pid), 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                procs = [self.proc] + self.proc.children(recursive=True)
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.05)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_measured(cmd: list[str], cwd: str | None = None) -> tuple[str, float, int]:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd)
    rss = PeakRss(proc.pid)
    out, _ = proc.communicate()
    peak = rss.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out[-3000:]}")
    return out, time.perf_counter() - start, peak


def synth(events: int, work: str) -> str:
    d = os.path.join(work, f"raw-{events}")
    path = os.path.join(d, "events.csv")
    if not os.path.exists(path):
        subprocess.run([sys.executable, "-m", "rayrec.cli", "synth", "--out", d, "--events", str(events),
                        "--items", str(max(2000, events // 50)), "--format", "csv", "--no-ceiling"], check=True,
                       stdout=subprocess.DEVNULL)
    return path


def rayrec_etl(path: str, out: str) -> dict:
    exe = os.path.join(os.path.dirname(sys.executable), "rayrec")
    _, wall, peak = run_measured([exe, "etl", "--config", CONFIG, "--input", path, "--out", out, "--overwrite"])
    report = json.load(open(os.path.join(out, "report.json")))
    return {"events": report["events"], "seconds": report["seconds"], "wall": round(wall, 2),
            "events_per_s": report["events"] / report["seconds"], "peak_rss_gib": peak / 2**30,
            "sessions": report["sessions"], "phases": report["phase_seconds"]}


def floor_seconds(path: str, out: str) -> dict:
    """Reading the input (pyarrow, all cores) plus writing the output tables as parquet."""
    t = time.perf_counter()
    pacsv.read_csv(path)
    read = time.perf_counter() - t
    tables = [pq.read_table(f) for f in sorted(glob.glob(os.path.join(out, "*", "*.parquet")))]
    t = time.perf_counter()
    for i, table in enumerate(tables):
        pq.write_table(table, os.path.join(out, f"_floor{i}.parquet"))
    write = time.perf_counter() - t
    for f in glob.glob(os.path.join(out, "_floor*.parquet")):
        os.remove(f)
    return {"read": read, "write": write, "seconds": read + write}


def nvtabular(path: str, out: str) -> dict | None:
    if not os.path.isdir(PEER):
        return None
    python = subprocess.run(["bash", os.path.join(PEER, "setup.sh")], capture_output=True, text=True,
                            check=True).stdout.strip().splitlines()[-1]
    os.makedirs(out, exist_ok=True)  # NVTabular writes categories/ into its working directory
    text, wall, peak = run_measured([python, os.path.join(PEER, "bench.py"), "--input", os.path.abspath(path),
                                     "--out", os.path.abspath(out)], cwd=out)
    result = json.loads(text.strip().splitlines()[-1])
    result.update({"wall": round(wall, 2), "peak_rss_gib": peak / 2**30})
    return result


def online_latency(data_dir: str, raw_csv: str, repeats: int = 2000) -> dict:
    from rayrec.etl import Workflow

    wf = Workflow.load(os.path.join(data_dir, "workflow"))
    table = pacsv.read_csv(raw_csv, read_options=pacsv.ReadOptions(block_size=1 << 20))
    table = table.slice(0, 200_000).to_pandas()
    sizes = table.groupby("user_session").size()
    key = sizes[sizes >= 20].index[0]
    g = table[table["user_session"] == key].head(20).astype(object)
    events = g.where(g.notna(), None).to_dict("records")
    for _ in range(50):
        wf.transform_events(events)
    times = []
    for _ in range(repeats):
        t = time.perf_counter_ns()
        wf.transform_events(events)
        times.append(time.perf_counter_ns() - t)
    ms = np.asarray(times) / 1e6
    return {"events": len(events), "median_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000])
    p.add_argument("--nvt-size", type=int, default=1_000_000, help="0 skips NVTabular")
    p.add_argument("--work", default="/tmp/rayrec-bench-etl")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()
    os.makedirs(a.work, exist_ok=True)
    results = {"machine": f"{host.node()} {os.cpu_count()} cores {psutil.virtual_memory().total / 2**30:.0f} GiB",
               "date": time.strftime("%Y-%m-%d"), "sizes": {}}
    for n in a.sizes:
        path = synth(n, a.work)
        out = os.path.join(a.work, f"rayrec-{n}")
        r = rayrec_etl(path, out)
        r["floor"] = floor_seconds(path, out)
        r["input_mib"] = os.path.getsize(path) / 2**20
        if n == a.nvt_size:
            r["nvtabular"] = nvtabular(path, os.path.join(a.work, f"nvt-{n}"))
            r["latency"] = online_latency(out, path)
        results["sizes"][n] = r
        print(json.dumps({n: r}), flush=True)

    print(f"\nREES46 pipeline, {results['machine']}, {results['date']}")
    print(f"{'events':>11} {'input MiB':>9} {'rayrec s':>8} {'events/s':>9} {'floor s':>7} {'x floor':>7} "
          f"{'peak RSS':>8} {'NVT s':>7} {'NVT ev/s':>8} {'speed-up':>8}")
    for n, r in results["sizes"].items():
        nvt = r.get("nvtabular") or {}
        ratio = f"{r['events_per_s'] / nvt['events_per_s']:.1f}x" if nvt else "-"
        print(f"{r['events']:>11,} {r['input_mib']:>9.0f} {r['seconds']:>8.2f} {r['events_per_s']:>9,.0f} "
              f"{r['floor']['seconds']:>7.2f} {r['seconds'] / r['floor']['seconds']:>7.1f} "
              f"{r['peak_rss_gib']:>6.2f}Gi {nvt.get('seconds', '-'):>7} {nvt.get('events_per_s', '-'):>8} {ratio:>8}")
    for n, r in results["sizes"].items():
        if "latency" in r:
            lat = r["latency"]
            print(f"online transform of one {lat['events']}-event session: median {lat['median_ms']:.3f} ms, "
                  f"p99 {lat['p99_ms']:.3f} ms")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
