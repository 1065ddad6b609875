"""`rayrec quickstart`: every stage once, on a small synthetic dataset, then shut down.

synth -> etl -> train (Ray Train, 2 workers, day by day) -> evaluate -> Ray Serve -> one
real HTTP request on 127.0.0.1 -> shutdown. Prints the model's per-day metrics beside the
most-popular baseline and the Bayes-optimal ceiling, and saves them as a PNG.
"""
from __future__ import annotations

import json
import os
import socket
import time
import urllib.request

import pyarrow.parquet as pq

from rayrec.etl import EtlConfig, default_workflow, run_etl
from rayrec.models.config import ModelConfig
from rayrec.plot import plot_days
from rayrec.synth import SynthConfig, write
from rayrec.train.config import TrainConfig
from rayrec.train.evaluate import evaluate_run, format_evaluation
from rayrec.train.trainer import format_table, run_training


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post_json(url: str, payload: dict, timeout: float = 30.0) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def sample_request(raw_path: str, data_dir: str, day: int) -> tuple[list[dict], object]:
    """A real held-out session, as raw events: all but its last item, and that last item."""
    sessions = pq.read_table(os.path.join(data_dir, str(day), "test.parquet"))
    key = sessions.column(0)[0].as_py()
    events = pq.read_table(raw_path, columns=["user_session", "product_id", "event_time"],
                           filters=[("user_session", "==", key)])
    events = events.sort_by("event_time").to_pylist()
    last = events[-1]["product_id"]
    history = list(events)
    while history and history[-1]["product_id"] == last:  # drop the last item's refreshes too
        history.pop()
    return [{"product_id": e["product_id"], "event_time": e["event_time"]} for e in history], last


def quickstart(out: str = "quickstart-out", events: int = 200_000, workers: int = 2, epochs: int = 4) -> dict:
    import ray

    from rayrec.serve.app import ServeConfig, start, stop_with_ray

    started = time.perf_counter()
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    print(f"== 1/5 synth: {events:,} REES46-style events over 7 days -> {out}/raw")
    report = write(SynthConfig(events=events), os.path.join(out, "raw"))
    print("== 2/5 etl (Dask): sessions by day")
    cfg = EtlConfig()
    etl = run_etl([report["path"]], os.path.join(out, "data"), cfg, default_workflow(cfg), overwrite=True,
                  progress=lambda m: None)
    print(f"   {etl['events']:,} events -> {etl['sessions']:,} sessions in {etl['seconds']} s, by day: "
          + ", ".join(f"{d}:{sum(v.values())}" for d, v in etl["sessions_by_day"].items()))
    print(f"== 3/5 train (Ray Train, {workers} workers, GPT-2 causal LM): day t -> evaluate day t+1")
    model = ModelConfig(arch="gpt2", masking="clm", d_model=64, n_layer=2, n_head=4, max_len=20)
    train = TrainConfig(workers=workers, epochs=epochs, lr=5e-3, batch_size=128)
    run_dir = os.path.join(out, "run")
    try:
        metrics = run_training(os.path.join(out, "data"), run_dir, model, train, overwrite=True, owns_process=True)
        print(format_table(metrics, report["by_day"]))
        png = plot_days(metrics, os.path.join(out, "metrics.png"), report["by_day"])
        a, p = metrics["average"], metrics["popularity_average"]
        print(f"   mean recall@20: model {a['recall@20']:.4f} | most popular {p['recall@20']:.4f} | "
              f"ceiling {report['ceiling']['recall@20']:.4f}    chart: {png}")

        print("== 4/5 evaluate the saved model on the last day's test split")
        evaluation = evaluate_run(run_dir, os.path.join(out, "data"))
        print(format_evaluation(evaluation))

        print("== 5/5 serve on Ray Serve (127.0.0.1) and send one request")
        port = free_port()
        start(run_dir, ServeConfig(port=port))
        day = evaluation["days"][0]["day"]
        history, truth = sample_request(report["path"], os.path.join(out, "data"), day)
        payload = {"events": history, "k": 10}
        t0 = time.perf_counter()
        status, answer = post_json(f"http://127.0.0.1:{port}/recommend", payload)
        ms = (time.perf_counter() - t0) * 1000
        print(f"   POST /recommend with {len(history)} events of a held-out session "
              f"(last seen: {history[-1]['product_id'] if history else None})")
        print(f"   -> HTTP {status} in {ms:.1f} ms: {json.dumps(answer)}")
        hit = truth in answer.get("items", [])
        print(f"   the session's real next item {truth} is {'in' if hit else 'not in'} the top 10")
    finally:
        if ray.is_initialized():
            stop_with_ray()
    summary = {"seconds": round(time.perf_counter() - started, 1), "model": metrics["average"],
               "popularity": metrics["popularity_average"], "ceiling": report["ceiling"],
               "served": answer, "status": status}
    with open(os.path.join(out, "quickstart.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"== done in {summary['seconds']} s; everything shut down. Outputs in {out}")
    return summary
