"""Load, latency and overload of `rayrec serve` (issue 14), over HTTP on 127.0.0.1.

    python benchmarks/serve.py [--seconds 5] [--out DIR]

One run measures, on the same model and the same real held-out sessions:
  1. the in-process Recommender on one session (the floor, and where its time goes);
  2. the endpoint without batching;
  3. the endpoint with batching;
  4. Ray Serve alone: a handler with a fixed answer, the framework's own floor here;
each under a closed loop (C concurrent clients with keep-alive connections) and an open
loop (fixed arrival rates; latency counted from the scheduled send, so a slow server is
not hidden by clients that wait). Then overload: a queue limit, offered far above
saturation. Prints the tables, writes serve.png (latency against throughput) and a JSON
line. The model: the quickstart's (synthetic REES46-style events, GPT-2 CLM).
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import tempfile
import threading
import time

import numpy as np


def build_model(work: str) -> tuple[str, list]:
    """The quickstart's data and model (trained in-process), and held-out sessions as raw events."""
    import pyarrow.parquet as pq

    from rayrec.etl import EtlConfig, default_workflow, run_etl
    from rayrec.models.config import ModelConfig
    from rayrec.synth import SynthConfig, write
    from rayrec.train.config import TrainConfig
    from rayrec.train.trainer import run_training

    raw = write(SynthConfig(events=200_000), os.path.join(work, "raw"))["path"]
    data, run = os.path.join(work, "data"), os.path.join(work, "run")
    if not os.path.exists(run):     # --out DIR keeps the model for the next run
        run_etl([raw], data, EtlConfig(), default_workflow(EtlConfig()), overwrite=True, progress=lambda m: None)
        run_training(data, run, ModelConfig(arch="gpt2", masking="clm", d_model=64, n_layer=2, n_head=4, max_len=20),
                     TrainConfig(workers=0, epochs=2, train_days="1:6", threads_per_worker=2), quiet=True)
    keys = set(pq.read_table(os.path.join(data, "7", "test.parquet")).column(0).to_pylist())
    events = pq.read_table(raw, columns=["user_session", "product_id", "event_time"]).to_pylist()
    sessions: dict = {}
    for e in events:
        if e["user_session"] in keys:
            sessions.setdefault(e["user_session"], []).append({"product_id": e["product_id"],
                                                               "event_time": e["event_time"]})
    return run, [s[:-1] for s in sessions.values() if len(s) >= 2]     # all but the item to predict


def percentiles(lat: list[float]) -> dict:
    if not lat:
        return {"p50": None, "p95": None, "p99": None}
    a = np.array(lat) * 1000
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)), "p99": float(np.percentile(a, 99))}


def floor(run: str, sessions: list, n: int = 2000) -> dict:
    """The in-process predictor on one session at a time, and its parts."""
    import torch

    from rayrec.serve.predictor import Query, Recommender

    torch.set_num_threads(1)
    rec = Recommender(run)
    parts = {"encode": [], "score": [], "decode": [], "total": []}
    for i in range(n):
        q = Query(sessions[i % len(sessions)], 10)
        t0 = time.perf_counter()
        row = rec.encode_session(q.events)
        batch = rec.collate([row])
        t1 = time.perf_counter()
        codes, scores = rec.scorer.topk(batch, q.k, None, None)
        t2 = time.perf_counter()
        rec.decode(codes[0], scores[0])
        t3 = time.perf_counter()
        for k, v in (("encode", t1 - t0), ("score", t2 - t1), ("decode", t3 - t2), ("total", t3 - t0)):
            parts[k].append(v)
    return {k: percentiles(v)["p50"] for k, v in parts.items()} | {"total_pcts": percentiles(parts["total"])}   # ms


class Client:
    """One keep-alive HTTP connection."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def post(self, body: bytes) -> int:
        try:
            self.conn.request("POST", "/recommend", body, {"Content-Type": "application/json"})
            r = self.conn.getresponse()
            r.read()
            return r.status
        except (OSError, http.client.HTTPException):
            self.conn.close()
            return 0


def closed_loop(port: int, bodies: list[bytes], clients: int, seconds: float) -> dict:
    lat, codes, lock, stop = [], [], threading.Lock(), time.perf_counter() + seconds

    def run(i):
        c, j = Client(port), i
        while time.perf_counter() < stop:
            t = time.perf_counter()
            status = c.post(bodies[j % len(bodies)])
            d = time.perf_counter() - t
            j += clients
            with lock:
                codes.append(status)
                if status == 200:
                    lat.append(d)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return summary(f"closed {clients}", lat, codes, time.perf_counter() - began)


def open_loop(port: int, bodies: list[bytes], rate: float, seconds: float, workers: int = 96) -> dict:
    """Requests sent at fixed times (rate per second); latency from the scheduled time."""
    todo: queue.Queue = queue.Queue()
    lat, codes, lock = [], [], threading.Lock()

    def run():
        c = Client(port)
        while True:
            item = todo.get()
            if item is None:
                return
            when, body = item
            delay = when - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            status = c.post(body)
            with lock:
                codes.append(status)
                if status == 200:
                    lat.append(time.perf_counter() - when)

    threads = [threading.Thread(target=run) for _ in range(workers)]
    for t in threads:
        t.start()
    began = time.perf_counter() + 0.2
    n = int(rate * seconds)
    for i in range(n):
        todo.put((began + i / rate, bodies[i % len(bodies)]))
    for _ in threads:
        todo.put(None)
    for t in threads:
        t.join()
    return summary(f"open {rate:g}/s", lat, codes, time.perf_counter() - began)


def summary(load: str, lat: list, codes: list, wall: float) -> dict:
    out = {"load": load, "ok": codes.count(200), "throughput": codes.count(200) / wall,
           "errors": {str(c): codes.count(c) for c in set(codes) if c != 200}}
    return out | percentiles(lat)


def endpoint_runs(run: str, sessions: list, batching: bool, seconds: float) -> list[dict]:
    from rayrec.quickstart import free_port
    from rayrec.serve.app import ServeConfig, start, stop

    port = free_port()
    start(run, ServeConfig(port=port, batching=batching, max_batch_size=32, batch_wait_timeout_s=0.002,
                           max_ongoing_requests=64, max_queued_requests=-1, threads=1))
    bodies = [json.dumps({"events": s, "k": 10}).encode() for s in sessions]
    rows = []
    try:
        closed_loop(port, bodies, 4, 1.0)   # warm-up
        for c in (1, 4, 16, 32, 64):
            rows.append(closed_loop(port, bodies, c, seconds))
        for rate in (50, 100, 200, 400):
            rows.append(open_loop(port, bodies, rate, seconds))
    finally:
        stop()
    return rows


def framework_floor(sessions: list, seconds: float) -> list[dict]:
    """Ray Serve's own cost on this machine: the same proxy, FastAPI ingress, client and
    bodies, with a handler that answers a fixed list (no model, no parsing)."""
    from fastapi import FastAPI
    from ray import serve

    from rayrec.quickstart import free_port

    api = FastAPI()

    @serve.deployment(name="Echo", max_ongoing_requests=64,
                      logging_config={"enable_access_log": False, "log_level": "WARNING"})
    @serve.ingress(api)
    class Echo:
        @api.post("/recommend")
        async def recommend(self):
            return {"items": list(range(10)), "scores": [0.0] * 10}

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port},
                logging_config={"enable_access_log": False, "log_level": "WARNING"})
    serve.run(Echo.bind(), name="echo", route_prefix="/")
    bodies = [json.dumps({"events": s, "k": 10}).encode() for s in sessions]
    try:
        closed_loop(port, bodies, 4, 1.0)   # warm-up
        return [closed_loop(port, bodies, c, seconds) for c in (1, 16)]
    finally:
        serve.shutdown()


def overload(run: str, sessions: list, seconds: float) -> dict:
    """A queue limit, offered 128 clients: what is refused, and the latency of the rest."""
    from rayrec.quickstart import free_port
    from rayrec.serve.app import ServeConfig, start, stop

    port = free_port()
    start(run, ServeConfig(port=port, max_ongoing_requests=32, max_queued_requests=16, threads=1))
    bodies = [json.dumps({"events": s, "k": 10}).encode() for s in sessions]
    try:
        return closed_loop(port, bodies, 128, seconds)
    finally:
        stop()


def plot(tables: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for (name, rows), color in zip(tables.items(), ("tab:orange", "tab:blue")):
        for kind, marker in (("closed", "o"), ("open", "s")):
            pts = sorted((r["throughput"], r["p50"], r["p99"]) for r in rows if r["load"].startswith(kind) and r["p50"])
            if pts:
                x, p50, p99 = zip(*pts)
                ax.plot(x, p50, marker=marker, color=color, label=f"{name}, {kind} loop, p50")
                ax.plot(x, p99, marker=marker, color=color, linestyle=":", label=f"{name}, {kind} loop, p99")
    ax.set_xlabel("answered requests / s")
    ax.set_ylabel("latency ms")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("rayrec serve on 2 cores: latency against throughput")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0, help="per offered load")
    p.add_argument("--out", help="directory for serve.png and the model (default: a temporary one)")
    a = p.parse_args()
    work = a.out or tempfile.mkdtemp(prefix="rayrec-serve-bench-")
    run, sessions = build_model(work)
    from rayrec.raylocal import init_ray

    init_ray(log_to_driver=False)   # the report is this script's: the proxy's queue-probe warnings under load stay in Ray's logs
    print(f"model: {run}; {len(sessions)} held-out sessions")
    base = floor(run, sessions)
    print(f"\nin-process Recommender, one session (p50 ms): encode {base['encode']:.2f}, score "
          f"{base['score']:.2f}, decode {base['decode']:.2f}, total {base['total']:.2f} "
          f"(p99 {base['total_pcts']['p99']:.2f})")
    tables = {"no batching": endpoint_runs(run, sessions, False, a.seconds),
              "batching": endpoint_runs(run, sessions, True, a.seconds)}
    for name, rows in tables.items():
        print(f"\nendpoint, {name}")
        print(f"{'load':<14} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}  errors")
        for r in rows:
            print(f"{r['load']:<14} {r['throughput']:>8.1f} {r['p50'] or 0:>8.2f} {r['p95'] or 0:>8.2f} "
                  f"{r['p99'] or 0:>8.2f}  {r['errors'] or '-'}")
    best = {k: max(r["throughput"] for r in v) for k, v in tables.items()}
    low = tables["batching"][0]["p50"]
    print(f"\nmax throughput: batching {best['batching']:.0f}/s, no batching {best['no batching']:.0f}/s "
          f"({best['batching'] / best['no batching']:.2f}x); p50 at 1 client {low:.2f} ms vs the in-process "
          f"floor {base['total']:.2f} ms (+{low - base['total']:.2f} ms)")
    echo = framework_floor(sessions, a.seconds)
    print(f"Ray Serve alone (fixed answer, same proxy and client): 1 client p50 {echo[0]['p50']:.2f} ms, "
          f"{echo[0]['throughput']:.0f}/s; 16 clients {echo[1]['throughput']:.0f}/s, p50 {echo[1]['p50']:.1f} ms")
    over = overload(run, sessions, a.seconds)
    print(f"overload (128 clients, max_queued_requests 16): {over['ok']} answered at {over['throughput']:.0f}/s, "
          f"refused {over['errors']}; accepted p50 {over['p50']:.1f} ms, p99 {over['p99']:.1f} ms "
          f"({over['p99'] / over['p50']:.1f}x p50)")
    png = os.path.join(work, "serve.png")
    plot(tables, png)
    print(f"chart: {png}")
    print(json.dumps({"floor": base, "serve_alone": echo, "tables": tables, "overload": over, "png": png}))


if __name__ == "__main__":
    main()
