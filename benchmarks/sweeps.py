"""Sweeps: what `rayrec tune` finds, and what a sweep costs (issue 13).

    python benchmarks/sweeps.py yoochoose [--trials 12] [--grace 3] [--sweep DIR] [--knn-tuned]
    python benchmarks/sweeps.py synthetic [--trials 8] [--events 1000000] [--work DIR]
    python benchmarks/sweeps.py efficiency [--trials 16]
    python benchmarks/sweeps.py asha [--trials 16] [--events 200000]

yoochoose: the standard protocol of session-based recommendation studies on
../shared/data/yoochoose-100k. Train on train.tsv; for every test session predict every
next click from the clicks before it (consecutive repeats kept: 10,152 points), ranking
all items. The sweep (examples/yoochoose/space.yaml) trains its trials on train.tsv's days
1-5 and selects on day 6, so the test set plays no part in the choice; the default config
and the swept best are then trained on all of train.tsv and scored on the test points, next
to V-SkNN (benchmarks/sessionknn.py: its usual setting, and the best of 96 settings chosen
on the test set itself, an optimistic bound) and most-popular. The repeat-dropped protocol
(consecutive repeats removed from train and test) is reported beside it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data", "yoochoose-100k")
EXAMPLE = os.path.join(ROOT, "examples", "yoochoose")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from sessionknn import VSkNN, hit_and_mrr, prediction_points, read_sessions  # noqa: E402


def prepare_yoochoose(work: str, drop_repeats: bool) -> str:
    """train.tsv's days 1-7 (day 7 holds 3 sessions) and test.tsv as day 8, one item vocabulary."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rayrec.config_io import from_dict
    from rayrec.etl import EtlConfig, Workflow, run_etl, workflow_from_config

    with open(os.path.join(EXAMPLE, "etl.yaml")) as f:
        spec = yaml.safe_load(f)
    if drop_repeats:
        spec["workflow"]["ops"].insert(0, {"op": "DropConsecutiveRepeats", "by": "SessionId", "column": "ItemId"})
    cfg = from_dict(EtlConfig, spec["etl"], "etl.yaml: etl")
    data, test = os.path.join(work, "data"), os.path.join(work, "test")
    run_etl([os.path.join(DATA, "train.tsv")], data, cfg, workflow_from_config(spec["workflow"], "etl.yaml"),
            progress=lambda m: None)
    run_etl([os.path.join(DATA, "test.tsv")], test, cfg, Workflow.load(os.path.join(data, "workflow")),
            fitted=True, progress=lambda m: None)
    last = max(int(d) for d in os.listdir(data) if d.isdigit())
    days = sorted(int(d) for d in os.listdir(test) if d.isdigit())
    os.makedirs(os.path.join(data, str(last + 1)))
    pq.write_table(pa.concat_tables([pq.read_table(os.path.join(test, str(d), "train.parquet")) for d in days]),
                   os.path.join(data, str(last + 1), "train.parquet"))
    return data


def score_run(run_dir: str, points: list[tuple[list, object]], batch: int = 512) -> dict:
    """HR@20 and MRR@20 of a run's model on the raw prediction points (each prefix's last
    max_len clicks, encoded by the run's fitted workflow)."""
    from rayrec.arrays import pad_ragged
    from rayrec.serve.predictor import Recommender

    rec = Recommender(run_dir)
    model, width = rec.model.eval(), rec.model.cfg.max_len
    ranks = []
    for start in range(0, len(points), batch):
        chunk = points[start:start + batch]
        prefixes = [p[-width:] for p, _ in chunk]
        lengths = np.array([len(p) for p in prefixes])
        flat = rec.encoder.encode(np.array([x for p in prefixes for x in p]), rec.vocab, rec.item_col)
        items = pad_ragged(np.concatenate([[0], np.cumsum(lengths)]), np.asarray(flat, dtype=np.int64), width)
        targets = torch.from_numpy(np.asarray(rec.encoder.encode(np.array([t for _, t in chunk]), rec.vocab,
                                                                 rec.item_col), dtype=np.int64))
        with torch.no_grad():
            scores = model.next_item_scores({rec.item_col: torch.from_numpy(items)})
        target_scores = scores.gather(1, targets[:, None])
        rank = (scores > target_scores).sum(1) + 1
        ranks += [int(r) if r <= 20 else None for r in rank]
    return hit_and_mrr(ranks)


def knn_rows(drop: bool, tuned: bool) -> list[dict]:
    train, test = read_sessions(os.path.join(DATA, "train.tsv"), drop), read_sessions(os.path.join(DATA, "test.tsv"),
                                                                                       drop)
    points = prediction_points(test)
    rows = [{"model": "V-SkNN (k 100, sample 500, linear, cosine)",
             **hit_and_mrr([VSkNN(train).rank_of(p, y) for p, y in points])}]
    best_hr = best_mrr = None
    grid = [(k, sample, decay) for k in (25, 50, 100, 200, 500, 1000) for sample in (250, 500, 1000, 2500)
            for decay in ("linear", "quadratic", "log", "same")] if tuned else []
    for k, sample, decay in grid:
        m = hit_and_mrr([VSkNN(train, k, sample, decay).rank_of(p, y) for p, y in points])
        if best_hr is None or m["HR@20"] > best_hr["HR@20"]:
            best_hr = dict(m, setting=f"k {k}, sample {sample}, {decay}")
        if best_mrr is None or m["MRR@20"] > best_mrr["MRR@20"]:
            best_mrr = dict(m, setting=f"k {k}, sample {sample}, {decay}")
    if grid:
        rows.append({"model": f"V-SkNN best of 96 on test: HR ({best_hr['setting']}) / MRR ({best_mrr['setting']})",
                     "HR@20": best_hr["HR@20"], "MRR@20": best_mrr["MRR@20"], "points": best_hr["points"]})
    pop = VSkNN(train).popular[:20]
    rows.append({"model": "most popular", **hit_and_mrr([pop.index(y) + 1 if y in pop else None for _, y in points])})
    return rows, points


def train_full(data: str, out: str, model_cfg, train_cfg) -> float:
    """Train on all of train.tsv (days 1-7 as one window), in-process."""
    from rayrec.train.trainer import run_training

    tcfg = dataclasses.replace(train_cfg, train_days="1:7", window_days=7, eval_split="train", workers=0)
    started = time.perf_counter()
    run_training(data, out, model_cfg, tcfg, overwrite=True)
    return time.perf_counter() - started


def yoochoose(a) -> None:
    from rayrec.config_io import from_dict
    from rayrec.models.config import ModelConfig
    from rayrec.train.config import TrainConfig
    from rayrec.tune.space import apply
    from rayrec.tune.sweep import SweepConfig, run_sweep

    with open(os.path.join(EXAMPLE, "base.yaml")) as f:
        base = yaml.safe_load(f)
    model = from_dict(ModelConfig, base["model"], "base.yaml: model")
    train = from_dict(TrainConfig, base["train"], "base.yaml: train")
    tables = {}
    work = tempfile.mkdtemp(prefix="rayrec-sweeps-")
    data = prepare_yoochoose(os.path.join(work, "keep"), drop_repeats=False)
    sweep = a.sweep or os.path.join(work, "sweep")
    started = time.perf_counter()
    if not a.sweep:   # else: the finished sweep given
        run_sweep(SweepConfig(data=data, out=sweep, space=os.path.join(EXAMPLE, "space.yaml"), samples=a.trials,
                              scheduler=a.scheduler, metric="ndcg@20", seed=a.seed, grace=a.grace or 3,
                              cpus_per_worker=a.threads_per_trial), model, train)
    sweep_seconds = time.perf_counter() - started
    results = json.load(open(os.path.join(sweep, "results.json")))
    best = results["trials"][0]
    best_model, best_train = apply(model, train, best["params"])
    for drop in (False, True):
        data = data if not drop else prepare_yoochoose(os.path.join(work, "drop"), drop_repeats=True)
        rows, points = knn_rows(drop, a.knn_tuned)
        for name, (m, t) in (("rayrec GPT-2 CLM, default config", (ModelConfig(max_len=50),
                                                                    TrainConfig(epochs=5, threads_per_worker=2))),
                             ("rayrec swept best", (best_model, dataclasses.replace(best_train, threads_per_worker=2)))):
            run = os.path.join(work, f"{'drop' if drop else 'keep'}-{len(rows)}")
            seconds = train_full(data, run, m, t)
            rows.append({"model": name, **score_run(run, points), "train_s": round(seconds, 1)})
        tables["repeats dropped" if drop else "repeats kept (standard)"] = rows
    print(f"\nsweep: {len(results['trials'])} trials in {sweep_seconds:.0f} s; best {best['trial']} "
          f"(day-6 ndcg@20 {best['score']:.4f}): {best['params']}")
    for title, rows in tables.items():
        print(f"\nyoochoose-100k, {title}: {rows[0]['points']} prediction points")
        print(f"{'model':<78} {'HR@20':>7} {'MRR@20':>7}")
        for r in rows:
            print(f"{r['model']:<78} {r['HR@20']:>7.4f} {r['MRR@20']:>7.4f}")
    with open(os.path.join(work, "best.yaml"), "w") as f:
        full = dataclasses.replace(best_train, train_days="1:7", window_days=7, eval_split="train")
        yaml.safe_dump({"model": dataclasses.asdict(best_model), "train": dataclasses.asdict(full)}, f,
                       sort_keys=False)
    print(json.dumps({"tables": tables, "best": best, "work": work}))


SMALL_SPACE = """\
model.arch: {choice: [gpt2, llama, gru]}
model.d_model: {choice: [32, 64]}
model.n_head: {choice: [2, 4], divides: model.d_model}
train.lr: {loguniform: [1.0e-4, 1.0e-2]}
train.batch_size: {choice: [64, 128]}
"""


def synthetic_sweep(work: str, name: str, a, scheduler: str, events: int, trials: int) -> tuple[dict, float]:
    """A random sweep of in-process trials on `rayrec synth` data (7 days, day by day)."""
    from rayrec.etl import EtlConfig, default_workflow, run_etl
    from rayrec.models.config import ModelConfig
    from rayrec.synth import SynthConfig, write
    from rayrec.train.config import TrainConfig
    from rayrec.tune.sweep import SweepConfig, run_sweep

    data = os.path.join(work, f"data-{events}")
    if not os.path.exists(data):
        write(SynthConfig(events=events, days=7, seed=0), os.path.join(work, f"synth-{events}"))
        run_etl([os.path.join(work, f"synth-{events}", "events.parquet")], data, EtlConfig(),
                default_workflow(EtlConfig()), progress=lambda m: None)
    space = os.path.join(work, "space.yaml")
    with open(space, "w") as f:
        f.write(SMALL_SPACE)
    started = time.perf_counter()
    run_sweep(SweepConfig(data=data, out=os.path.join(work, name), space=space, samples=trials, scheduler=scheduler,
                          seed=a.seed), ModelConfig(n_layer=1), TrainConfig(epochs=2, workers=0))
    wall = time.perf_counter() - started
    return json.load(open(os.path.join(work, name, "results.json"))), wall


SYNTH_SPACE = """\
model.arch: {choice: [gpt2, llama, gru]}
model.n_head: {choice: [2, 4]}
model.n_layer: {choice: [1, 2]}
model.dropout: {uniform: [0.0, 0.3]}
train.lr: {loguniform: [1.0e-3, 1.0e-2]}
train.batch_size: {choice: [128, 256]}
"""


def synthetic(a) -> None:
    """The sweep's best on `rayrec synth` data against the Bayes-optimal ceiling of the last day.

    The trials train on days 1-5 as one window and are selected on day 6 (after each
    epoch, under ASHA); the default config and the best are then trained on days 1-6 and
    scored on day 7, whose ceiling the generator computed."""
    from rayrec.etl import EtlConfig, default_workflow, run_etl
    from rayrec.models.config import ModelConfig
    from rayrec.synth import SynthConfig, write
    from rayrec.train.config import TrainConfig
    from rayrec.train.evaluate import evaluate_run
    from rayrec.train.trainer import run_training
    from rayrec.tune.space import apply
    from rayrec.tune.sweep import SweepConfig, run_sweep

    work = a.work or tempfile.mkdtemp(prefix="rayrec-sweeps-")
    raw, data = os.path.join(work, f"synth-{a.events}"), os.path.join(work, f"data-{a.events}")
    if not os.path.exists(data):
        write(SynthConfig(events=a.events, days=7, seed=0), raw)
        run_etl([os.path.join(raw, "events.parquet")], data, EtlConfig(), default_workflow(EtlConfig()),
                progress=lambda m: None)
    ceiling = json.load(open(os.path.join(raw, "ceiling.json")))["by_day"]["7"]["recall@20"]
    space = os.path.join(work, "synth-space.yaml")
    with open(space, "w") as f:
        f.write(SYNTH_SPACE)
    # the quickstart's model, as the base and the default row
    model = ModelConfig(arch="gpt2", masking="clm", d_model=64, n_layer=2, n_head=4, max_len=20)
    base = TrainConfig(workers=0, epochs=a.epochs, lr=5e-3, batch_size=128, train_days="1:5", window_days=5,
                       eval_every="epoch")
    sweep = a.sweep or os.path.join(work, "synth-sweep")
    started = time.perf_counter()
    if not a.sweep:
        run_sweep(SweepConfig(data=data, out=sweep, space=space, samples=a.trials, scheduler=a.scheduler,
                              metric="recall@20", seed=a.seed, grace=a.grace or 1,
                              cpus_per_worker=a.threads_per_trial), model, base)
    sweep_seconds = time.perf_counter() - started
    best = json.load(open(os.path.join(sweep, "results.json")))["trials"][0]
    rows = []
    for name, (m, t) in (("default (quickstart model, 4 epochs)", (model, dataclasses.replace(base, epochs=4))),
                         ("swept best", apply(model, base, best["params"]))):
        t = dataclasses.replace(t, train_days="1:6", window_days=6, eval_every="window", threads_per_worker=2)
        run = os.path.join(work, f"synth-{len(rows)}")
        began = time.perf_counter()
        metrics = run_training(data, run, m, t, overwrite=True)
        seconds = time.perf_counter() - began
        # day 7's valid split (what training reports) and its test split: 4k sessions, not 2k
        valid = metrics["days"][-1]
        test = evaluate_run(run, data, "7:7", "test")["days"][0]
        n = valid["count"] + test["count"]
        recall = (valid["recall@20"] * valid["count"] + test["recall@20"] * test["count"]) / n
        rows.append({"model": name, "recall@20": recall, "of_ceiling": recall / ceiling, "sessions": n,
                     "valid": valid["recall@20"], "test": test["recall@20"], "train_s": round(seconds, 1)})
    print(f"\nsweep: {a.trials} trials in {sweep_seconds:.0f} s; best (day-6 recall@20 {best['score']:.4f}): "
          f"{best['params']}")
    print(f"\nrayrec synth, {a.events:,} events, 7 days: day 7, Bayes-optimal recall@20 {ceiling:.4f}")
    print(f"{'model':<40} {'valid':>7} {'test':>7} {'recall@20':>10} {'of ceiling':>11} {'train s':>8}")
    for r in rows:
        print(f"{r['model']:<40} {r['valid']:>7.4f} {r['test']:>7.4f} {r['recall@20']:>10.4f} {r['of_ceiling']:>11.1%} "
              f"{r['train_s']:>8.1f}")
    print(f"(recall@20 over day 7's valid and test splits together: {rows[0]['sessions']:,} sessions)")
    print(json.dumps({"ceiling": ceiling, "rows": rows, "best": best, "work": work}))


def efficiency_table(results: dict, wall: float, concurrency: int = 2) -> dict:
    """Sum of the trials' training seconds / (wall seconds x concurrency), and start-up."""
    rows = [r for r in results["trials"] if r["status"] == "finished"]
    train_s = sum(r["train_seconds"] for r in rows)
    run_s = sum(r["run_seconds"] for r in rows)
    trial_s = sum(r["seconds"] for r in rows)
    print(f"\n{len(rows)} finished trials, {concurrency} at once, wall {wall:.1f} s")
    print(f"{'seconds':<48} {'sum':>8} {'share':>7}")
    for name, v in (("training loop (train_seconds)", train_s), ("run_training: load, train, evaluate, publish", run_s),
                    ("trial function (incl. model check)", trial_s), ("wall x concurrency", wall * concurrency)):
        print(f"{name:<48} {v:>8.1f} {v / (wall * concurrency):>7.1%}")
    startup = (wall * concurrency - run_s) / len(rows)
    print(f"start-up per trial (wall x concurrency - run seconds) / trials: {startup:.2f} s; "
          f"inside the trial before training {(trial_s - run_s) / len(rows):.2f} s")
    return {"wall": round(wall, 1), "train_s": round(train_s, 1), "run_s": round(run_s, 1), "trials": len(rows),
            "efficiency_train": round(train_s / (wall * concurrency), 3),
            "efficiency_run": round(run_s / (wall * concurrency), 3), "startup_s": round(startup, 2)}


def efficiency(a) -> None:
    work = tempfile.mkdtemp(prefix="rayrec-sweeps-")
    ray_start = warm_cluster()
    results, wall = synthetic_sweep(work, "fifo", a, "fifo", a.events, a.trials)
    print(f"Ray's local cluster started in {ray_start:.1f} s, before the sweep")
    print(json.dumps({"ray_start_s": round(ray_start, 1), **efficiency_table(results, wall)}))


def warm_cluster() -> float:
    """Start the local cluster before the sweeps, as `--address` finds one running: each
    sweep's wall is then its own, and the cluster's start-up is reported apart."""
    from rayrec.raylocal import init_ray

    started = time.perf_counter()
    init_ray(log_to_driver=False)
    return time.perf_counter() - started


def asha(a) -> None:
    """The same trials to completion (fifo) and under ASHA, on one running cluster."""
    work = tempfile.mkdtemp(prefix="rayrec-sweeps-")
    out = {"ray_start_s": round(warm_cluster(), 1)}
    for scheduler in ("fifo", "asha"):
        results, wall = synthetic_sweep(work, scheduler, a, scheduler, a.events, a.trials)
        best = results["trials"][0]
        out[scheduler] = {"wall": round(wall, 1), "best": best["score"], "best_trial": best["params"],
                          "stopped": sum(r["status"] == "stopped early" for r in results["trials"])}
        if scheduler == "fifo":   # every trial to completion: the sweep-efficiency figure too
            out["efficiency"] = efficiency_table(results, wall)
    print(f"\n{'scheduler':<10} {'wall s':>8} {'best ndcg@20':>13} {'stopped early':>14}")
    for k, v in ((k, out[k]) for k in ("fifo", "asha")):
        print(f"{k:<10} {v['wall']:>8.1f} {v['best']:>13.4f} {v['stopped']:>14}")
    print(f"Ray's local cluster started in {out['ray_start_s']:.1f} s, before both sweeps")
    print(f"ASHA: {out['fifo']['wall'] / out['asha']['wall']:.2f}x faster, best metric "
          f"{out['asha']['best'] / out['fifo']['best'] - 1:+.2%}")
    print(json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=["yoochoose", "synthetic", "efficiency", "asha"])
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--scheduler", default="asha")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grace", type=int, help="asha: evaluations before a trial may be stopped "
                   "(default: 3 for yoochoose, 1 for synthetic)")
    p.add_argument("--threads-per-trial", type=int, default=1)
    p.add_argument("--sweep", help="yoochoose: score this finished sweep's best instead of running one")
    p.add_argument("--knn-tuned", action="store_true", help="yoochoose: also V-SkNN's best of 96 settings "
                   "on the test set (slow: about an hour on 2 cores)")
    p.add_argument("--events", type=int, default=None,
                   help="synthetic events (default: 1,000,000 for synthetic, 300,000 for efficiency and asha)")
    p.add_argument("--epochs", type=int, default=3, help="synthetic: the trials' epochs")
    p.add_argument("--work", help="synthetic: keep the data (and runs) in this directory, to reuse")
    a = p.parse_args()
    a.events = a.events or (1_000_000 if a.part == "synthetic" else 300_000)
    {"yoochoose": yoochoose, "synthetic": synthetic, "efficiency": efficiency, "asha": asha}[a.part](a)


if __name__ == "__main__":
    main()
