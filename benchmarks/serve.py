"""Load, latency and overload of `rayrec serve` (issue 14), over HTTP on 127.0.0.1.

    python benchmarks/serve.py [--seconds 5] [--out DIR] [--models quickstart,rees46-side]

One run measures, on the same model and the same real held-out sessions:
  1. the in-process Recommender on one session (the floor, and where its time goes);
  2. the endpoint without batching;
  3. the endpoint with batching;
  4. Ray Serve alone: a handler with a fixed answer, with and without reading the
     request body: the framework's own floor here;
each under a closed loop (C concurrent clients with keep-alive connections) and an open
loop (fixed arrival rates; latency counted from the scheduled send, so a slow server is
not hidden by clients that wait). Then overload, offered far above saturation, with the
replica shedding (the defaults) and with Serve's proxy shedding. Prints the tables, writes serve.png (latency against throughput) and a JSON
line. The models, trained on `rayrec synth` events: the quickstart's (GPT-2 CLM, item
and time) and the REES46 tutorial's XLNet-MLM with side features (d_model 192). In the
endpoint tables, the replica's own histograms split its time: the handler, the wait for
the scorer, one batch's encode+score+decode, and sessions per batch.
"""
from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import queue
import tempfile
import threading
import time

import numpy as np


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {   # name -> (ETL config (None: the default workflow), model config, its training)
    "quickstart": (None, None, dict(epochs=2)),
    "rees46-side": (os.path.join(ROOT, "examples", "rees46", "etl.yaml"),
                    os.path.join(ROOT, "examples", "rees46", "xlnet-mlm-side.yaml"), dict(epochs=1)),
}


def build_model(work: str, name: str) -> tuple[str, list]:
    """One model (trained in-process on `rayrec synth` events) and held-out sessions as raw
    events, with every field its workflow reads: the quickstart's (GPT-2 CLM, item and
    time) and the REES46 tutorial's XLNet-MLM with side features (category, brand, price)."""
    import pyarrow.parquet as pq

    from rayrec.config_io import from_dict, read_section
    from rayrec.etl import EtlConfig, default_workflow, run_etl, workflow_from_config
    from rayrec.models.config import ModelConfig
    from rayrec.serve.predictor import Recommender
    from rayrec.synth import SynthConfig, write
    from rayrec.train.config import TrainConfig
    from rayrec.train.trainer import run_training

    etl_yaml, model_yaml, train = MODELS[name]
    raw = os.path.join(work, "raw", "events.parquet")
    if not os.path.exists(raw):
        raw = write(SynthConfig(events=200_000), os.path.join(work, "raw"))["path"]
    data, run = os.path.join(work, name, "data"), os.path.join(work, name, "run")
    if not os.path.exists(run):     # --out DIR keeps the models for the next run
        cfg = from_dict(EtlConfig, read_section(etl_yaml, "etl"), "etl") if etl_yaml else EtlConfig()
        workflow = workflow_from_config(read_section(etl_yaml, "workflow"), etl_yaml) if etl_yaml else default_workflow(cfg)
        run_etl([raw], data, cfg, workflow, overwrite=True, progress=lambda m: None)
        model = (from_dict(ModelConfig, read_section(model_yaml, "model"), model_yaml) if model_yaml else
                 ModelConfig(arch="gpt2", masking="clm", d_model=64, n_layer=2, n_head=4, max_len=20))
        run_training(data, run, model, TrainConfig(workers=0, train_days="1:6", threads_per_worker=2, **train), quiet=True)
    fields = [f for f in Recommender(run).workflow.raw_columns() if f != "user_session"]
    events = pq.read_table(raw, columns=sorted(set(fields) | {"user_session", "event_time"})).to_pylist()
    last_day = max(e["event_time"][:10] for e in events)       # not trained on (days 1-6)
    sessions: dict = {}
    for e in events:
        sessions.setdefault(e["user_session"], []).append(e)
    sessions = {k: [{f: e[f] for f in fields} for e in v] for k, v in sessions.items()
                if v[0]["event_time"][:10] == last_day}
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
    """One keep-alive HTTP connection, posting to `path`."""

    def __init__(self, port: int, path: str = "/recommend"):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.path = path

    def post(self, body: bytes) -> int:
        try:
            self.conn.request("POST", self.path, body, {"Content-Type": "application/json"})
            r = self.conn.getresponse()
            r.read()
            return r.status
        except (OSError, http.client.HTTPException):
            self.conn.close()
            return 0


def closed_loop(port: int, bodies: list[bytes], clients: int, seconds: float, path: str = "/recommend") -> dict:
    lat, codes, lock, stop = [], [], threading.Lock(), time.perf_counter() + seconds

    def run(i):
        c, j = Client(port, path), i
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


def open_loop(port: int, bodies: list[bytes], rate: float, seconds: float, workers: int = 96,
              path: str = "/recommend") -> dict:
    """Requests sent at fixed times (rate per second); latency from the scheduled time, and
    (`sent_p50`, `sent_p99`) from the actual send, which is later when every worker is busy."""
    todo: queue.Queue = queue.Queue()
    lat, from_send, codes, lock = [], [], [], threading.Lock()

    def run():
        c = Client(port, path)
        while True:
            item = todo.get()
            if item is None:
                return
            when, body = item
            delay = when - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent = time.perf_counter()
            status = c.post(body)
            with lock:
                codes.append(status)
                if status == 200:
                    lat.append(time.perf_counter() - when)
                    from_send.append(time.perf_counter() - sent)

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
    sent = percentiles(from_send)
    return summary(f"open {rate:g}/s", lat, codes, time.perf_counter() - began) | {"sent_p50": sent["p50"],
                                                                                   "sent_p99": sent["p99"]}


def summary(load: str, lat: list, codes: list, wall: float) -> dict:
    out = {"load": load, "ok": codes.count(200), "throughput": codes.count(200) / wall,
           "errors": {str(c): codes.count(c) for c in set(codes) if c != 200}}
    return out | percentiles(lat)


def replica_sums(port: int) -> dict:
    """The endpoint's own histograms (summed over replicas): sums and counts, to diff."""
    import re

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    out = {}
    for name in ("rayrec_request_seconds", "rayrec_queue_seconds", "rayrec_batch_seconds", "rayrec_batch_sessions"):
        for part in ("sum", "count"):
            m = re.search(rf"^{name}_{part}{{[^}}]*}} (\S+)$", text, re.M)
            out[f"{name}_{part}"] = float(m.group(1)) if m else 0.0
    return out


def in_replica(before: dict, after: dict) -> dict:
    """Means over one load, measured in the replica: its whole handler, the wait for the
    scorer, one batch's encode+score+decode, and the sessions per batch."""
    d = {k: after[k] - before[k] for k in after}

    def mean(name, scale=1000.0):
        n = d[f"{name}_count"]
        return scale * d[f"{name}_sum"] / n if n else None

    return {"handler_ms": mean("rayrec_request_seconds"), "queue_ms": mean("rayrec_queue_seconds"),
            "batch_ms": mean("rayrec_batch_seconds"), "batch_size": mean("rayrec_batch_sessions", 1.0)}


def endpoint_runs(run: str, sessions: list, batching: bool, seconds: float) -> list[dict]:
    from rayrec.quickstart import free_port
    from rayrec.serve.app import ServeConfig, start, stop

    port = free_port()
    start(run, ServeConfig(port=port, batching=batching, max_batch_size=32, max_ongoing_requests=64,
                           max_queued_requests=-1, max_waiting_sessions=None, threads=1))   # capacity, no shedding
    bodies = [json.dumps({"events": s, "k": 10}).encode() for s in sessions]
    rows = []
    try:
        closed_loop(port, bodies, 4, 1.0)   # warm-up
        time.sleep(0.6)                     # the replicas' counts reach the store every 0.5 s
        for load in [("closed", c) for c in (1, 4, 16, 32, 64)] + [("open", r) for r in (50, 100, 200, 400)]:
            before = replica_sums(port)
            row = closed_loop(port, bodies, load[1], seconds) if load[0] == "closed" else \
                open_loop(port, bodies, load[1], seconds)
            time.sleep(0.6)
            rows.append(row | in_replica(before, replica_sums(port)))
    finally:
        stop()
    return rows


def framework_floor(sessions: list, seconds: float, read_body: bool) -> list[dict]:
    """Ray Serve's own cost on this machine: the same proxy, FastAPI ingress, client and
    bodies, with a handler that answers a fixed list, with or without reading and
    validating the request body (Serve's replica fetches a body from the proxy with a
    call of its own)."""
    from fastapi import FastAPI, Request
    from ray import serve

    from rayrec.quickstart import free_port
    from rayrec.serve.api import Session

    api = FastAPI()

    @serve.deployment(name="Echo", max_ongoing_requests=64,
                      logging_config={"enable_access_log": False, "log_level": "WARNING"})
    @serve.ingress(api)
    class Echo:
        async def recommend(self, request):
            if read_body:
                Session.model_validate_json(await request.body())
            return {"items": list(range(10)), "scores": [0.0] * 10}

        recommend.__annotations__ = {"request": Request}   # the class itself, not this module's string
        recommend = api.post("/recommend")(recommend)

    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port},
                logging_config={"enable_access_log": False, "log_level": "WARNING"})
    serve.run(Echo.bind(), name="echo", route_prefix="/")
    bodies = [json.dumps({"events": s, "k": 10}).encode() for s in sessions]
    try:
        closed_loop(port, bodies, 4, 1.0)   # warm-up
        return [closed_loop(port, bodies, c, seconds) for c in (1, 32)]
    finally:
        serve.shutdown()


SHEDDING = {   # who refuses past the limit -> the settings
    "replica (defaults)": {},
    "proxy": {"max_ongoing_requests": 128, "max_queued_requests": 16, "max_waiting_sessions": None},
}


def overload(run: str, sessions: list, seconds: float, clients: int) -> list[dict]:
    """Offered far above saturation (open loop, 400 and 800 requests/s from up to `clients`
    connections, a refusal not retried), once with the defaults (the replica sheds what
    its scorer cannot take soon, `max_waiting_sessions`) and once with Serve's proxy
    holding requests back past `max_ongoing_requests` and refusing past its queue: what
    is refused, and the latency of the rest."""
    from rayrec.quickstart import free_port
    from rayrec.serve.app import ServeConfig, start, stop

    bodies = [json.dumps({"events": s, "k": 10}).encode() for s in sessions]
    rows = []
    for label, settings in SHEDDING.items():
        port = free_port()
        start(run, ServeConfig(port=port, threads=1, **settings))
        try:
            closed_loop(port, bodies, 4, 1.0)   # warm-up
            rows += [open_loop(port, bodies, rate, seconds, workers=clients) | {"sheds": label, **settings}
                     for rate in (400, 800)]
        finally:
            stop()
    return rows


def plot(tables: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for (name, rows), color in zip(tables.items(), ("tab:orange", "tab:blue", "tab:red", "tab:green")):
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


def report(name: str, base: dict, tables: dict) -> dict:
    """Print one model's tables; returns its headline figures."""
    print(f"\n== {name}: in-process Recommender, one session (p50 ms): encode {base['encode']:.2f}, score "
          f"{base['score']:.2f}, decode {base['decode']:.2f}, total {base['total']:.2f} "
          f"(p99 {base['total_pcts']['p99']:.2f})")
    for mode, rows in tables.items():
        print(f"\nendpoint, {mode}   (in replica: mean handler, queue for the scorer, one batch, sessions/batch)")
        print(f"{'load':<14} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'handler':>8} {'queue':>8} "
              f"{'batch':>8} {'size':>5}  errors")
        for r in rows:
            cells = " ".join(f"{r[k]:>8.2f}" if r[k] is not None else f"{'-':>8}" for k in ("handler_ms", "queue_ms",
                                                                                          "batch_ms"))
            print(f"{r['load']:<14} {r['throughput']:>8.1f} {r['p50'] or 0:>8.2f} {r['p95'] or 0:>8.2f} "
                  f"{r['p99'] or 0:>8.2f} {cells} {r['batch_size'] or 0:>5.1f}  {r['errors'] or '-'}")
    best = {k: max(r["throughput"] for r in v) for k, v in tables.items()}
    low = tables["batching"][0]["p50"]
    head = {"batching_max": best["batching"], "no_batching_max": best["no batching"],
            "ratio": best["batching"] / best["no batching"], "p50_1_client": low, "floor": base["total"]}
    print(f"\n{name}: max throughput batching {head['batching_max']:.0f}/s, no batching {head['no_batching_max']:.0f}/s "
          f"({head['ratio']:.2f}x); p50 at 1 client {low:.2f} ms vs the in-process floor {base['total']:.2f} ms "
          f"(+{low - base['total']:.2f} ms)")
    return head


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0, help="per offered load")
    p.add_argument("--out", help="directory for serve.png and the models (default: a temporary one)")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    p.add_argument("--overload-clients", type=int, default=512,
                   help="connections of the overload run (far above what the limits hold)")
    p.add_argument("--only", choices=["floors,overload"], help="skip the endpoints' load tables")
    a = p.parse_args()
    work = a.out or tempfile.mkdtemp(prefix="rayrec-serve-bench-")
    built = {name: build_model(work, name) for name in a.models.split(",")}
    skip_load = a.only == "floors,overload"
    from rayrec.raylocal import init_ray

    init_ray(log_to_driver=False)   # the report is this script's: the proxy's queue-probe warnings under load stay in Ray's logs
    results = {}
    for name, (run, sessions) in ([] if skip_load else built.items()):
        print(f"model {name}: {run}; {len(sessions)} held-out sessions")
        base = floor(run, sessions)
        tables = {"no batching": endpoint_runs(run, sessions, False, a.seconds),
                  "batching": endpoint_runs(run, sessions, True, a.seconds)}
        results[name] = {"floor": base, "tables": tables, "headline": report(name, base, tables)}
    sessions = next(iter(built.values()))[1]
    echo = {"fixed answer": framework_floor(sessions, a.seconds, False),
            "reads the body": framework_floor(sessions, a.seconds, True)}
    print("\nRay Serve alone (same proxy, ingress, client and bodies; a fixed answer):")
    for label, (one, many) in echo.items():
        print(f"  {label:<15} 1 client p50 {one['p50']:.2f} ms, {one['throughput']:.0f}/s; 32 clients "
              f"{many['throughput']:.0f}/s, p50 {many['p50']:.1f} ms")
    run, sessions = next(iter(built.values()))
    over = overload(run, sessions, a.seconds, a.overload_clients)
    for o in over:
        print(f"overload, {o['sheds']} sheds ({o['load']}, {a.overload_clients} clients): {o['ok']} answered at "
              f"{o['throughput']:.0f}/s, refused {o['errors']}; accepted p50 {o['p50']:.1f} ms, p99 {o['p99']:.1f} ms "
              f"({o['p99'] / o['p50']:.1f}x p50); from the actual send p50 {o['sent_p50']:.1f} ms, p99 "
              f"{o['sent_p99']:.1f} ms")
    png = os.path.join(work, "serve.png")
    if results:
        plot({f"{m}, {mode}": rows for m, r in results.items() for mode, rows in r["tables"].items()}, png)
        print(f"chart: {png}")
    print(json.dumps({"models": results, "serve_alone": echo, "overload": over, "png": png}))


if __name__ == "__main__":
    main()
