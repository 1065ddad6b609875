"""Triton (this export) against rayrec's Ray Serve endpoint, on the same model, machine,
sessions and load generator (issue 15). Not named triton.py: run as a script, that name
would shadow the `triton` package torch looks for.

    python benchmarks/triton_bench.py [--seconds 4] [--out DIR] [--models quickstart,rees46-side] [--instances 1]

For each model: the in-process Recommender on one session (the floor); then the same
closed loops (C keep-alive HTTP clients, benchmarks/serve.py's generator) against
  1. Triton: the exported ensemble over its KServe v2 HTTP/JSON route (the python backend
     runs the ONNX graph here: this server has no onnxruntime backend);
  2. `rayrec serve` with its defaults (batching on), POST /recommend.
Prints both tables, their ratio, and where Triton's time goes per model (its statistics
extension: queue and compute per request), then one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serve as bench  # noqa: E402  (the load generator and the models of benchmarks/serve.py)

LOADS = (1, 4, 16, 32, 64)


def kserve_body(events: list[dict], fields: dict, k: int = 10) -> bytes:
    """The ensemble's request in KServe v2 JSON: one row of `len(events)` events."""
    n = len(events)
    inputs = [{"name": f, "shape": [1, n], "datatype": t,
               "data": [str(e[f]) if t == "BYTES" else e[f] for e in events]} for f, t in fields.items()]
    inputs += [{"name": "lengths", "shape": [1, 1], "datatype": "INT32", "data": [n]},
               {"name": "k", "shape": [1, 1], "datatype": "INT32", "data": [k]},
               {"name": "exclude_seen", "shape": [1, 1], "datatype": "BOOL", "data": [False]}]
    return json.dumps({"inputs": inputs, "outputs": [{"name": "item_ids"}, {"name": "item_scores"}]}).encode()


def stats(url: str) -> dict:
    """model -> (requests, queue ns, compute ns) so far, from Triton's statistics extension."""
    with urllib.request.urlopen(f"http://{url}/v2/models/stats", timeout=30) as r:
        data = json.load(r)
    out = {}
    for m in data["model_stats"]:
        s = m["inference_stats"]
        compute = sum(int(s[p]["ns"]) for p in ("compute_input", "compute_infer", "compute_output"))
        out[m["name"]] = (int(s["success"]["count"]), int(s["queue"]["ns"]), compute)
    return out


def breakdown(before: dict, after: dict) -> dict:
    """model -> mean queue and compute ms per request over a load."""
    out = {}
    for name, (n, q, c) in after.items():
        n0, q0, c0 = before.get(name, (0, 0, 0))
        if n > n0:
            out[name] = {"queue_ms": (q - q0) / (n - n0) / 1e6, "compute_ms": (c - c0) / (n - n0) / 1e6}
    return out


def triton_runs(run: str, sessions: list, seconds: float, work: str, instances: int) -> tuple[list, list]:
    from rayrec.serve import triton_local
    from rayrec.serve.triton import TritonRecommender
    from rayrec.serve.triton_repo import TritonExport, export_triton, model_names

    repo = os.path.join(work, f"triton-{os.path.basename(os.path.dirname(run))}-{time.time_ns()}")
    export_triton(run, repo, TritonExport(model_backend="python", instances=instances))
    server = triton_local.start(repo, model_names("rayrec"), timeout_s=180)
    rows, parts = [], []
    try:
        client = TritonRecommender(server.http_url, "rayrec")
        fields = client.fields
        client.close()
        bodies = [kserve_body(s, fields) for s in sessions]
        path = "/v2/models/rayrec/infer"
        bench.closed_loop(server.http_port, bodies, 4, 1.0, path)    # warm-up
        for c in LOADS:
            before = stats(server.http_url)
            rows.append(bench.closed_loop(server.http_port, bodies, c, seconds, path))
            parts.append(breakdown(before, stats(server.http_url)))
    finally:
        server.stop()
    return rows, parts


def serve_runs(run: str, sessions: list, seconds: float) -> list:
    from rayrec.quickstart import free_port
    from rayrec.serve.app import ServeConfig, start, stop

    port = free_port()
    start(run, ServeConfig(port=port, threads=1))
    bodies = [json.dumps({"events": s, "k": 10}).encode() for s in sessions]
    try:
        bench.closed_loop(port, bodies, 4, 1.0)
        return [bench.closed_loop(port, bodies, c, seconds) for c in LOADS]
    finally:
        stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=4.0, help="per load")
    p.add_argument("--out", help="directory for the models and repositories (default: a temporary one)")
    p.add_argument("--models", default="quickstart,rees46-side")
    p.add_argument("--instances", type=int, default=1, help="instances of each Triton model")
    a = p.parse_args()
    work = a.out or tempfile.mkdtemp(prefix="rayrec-triton-bench-")
    from rayrec.raylocal import init_ray

    init_ray(log_to_driver=False)
    results = {}
    for name in a.models.split(","):
        run, sessions = bench.build_model(work, name)
        base = bench.floor(run, sessions)
        tri, parts = triton_runs(run, sessions, a.seconds, work, a.instances)
        srv = serve_runs(run, sessions, a.seconds)
        print(f"\n== {name}: in-process Recommender, one session, p50 {base['total']:.2f} ms")
        print(f"{'clients':>7} | {'Triton req/s':>12} {'p50 ms':>8} {'p99 ms':>8} | {'Serve req/s':>11} {'p50 ms':>8} "
              f"{'p99 ms':>8} | {'ratio':>5} | Triton per model: queue / compute ms")
        for c, t, s, part in zip(LOADS, tri, srv, parts):
            where = ", ".join(f"{m.replace('rayrec_', '').replace('rayrec', 'ensemble')} {v['queue_ms']:.2f}/"
                              f"{v['compute_ms']:.2f}" for m, v in sorted(part.items()))
            print(f"{c:>7} | {t['throughput']:>12.1f} {t['p50'] or 0:>8.2f} {t['p99'] or 0:>8.2f} | "
                  f"{s['throughput']:>11.1f} {s['p50'] or 0:>8.2f} {s['p99'] or 0:>8.2f} | "
                  f"{t['throughput'] / max(s['throughput'], 1e-9):>5.2f} | {where}")
        best_t, best_s = max(r["throughput"] for r in tri), max(r["throughput"] for r in srv)
        head = {"floor_ms": base["total"], "triton_p50_1": tri[0]["p50"], "serve_p50_1": srv[0]["p50"],
                "triton_max": best_t, "serve_max": best_s}
        print(f"{name}: Triton p50 at 1 client {tri[0]['p50']:.2f} ms = {tri[0]['p50'] / base['total']:.2f}x the "
              f"floor (goal <= 2x); max {best_t:.0f}/s against Ray Serve's {best_s:.0f}/s "
              f"({best_t / best_s:.2f}x, goal >= 1x)")
        results[name] = {"floor": base, "triton": tri, "triton_parts": parts, "serve": srv, "headline": head}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
