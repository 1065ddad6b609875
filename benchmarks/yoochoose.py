"""Real clicks: yoochoose-100k (../shared/data/yoochoose-100k), the usual protocol.

Train on train.tsv (6 days) and, for every session of test.tsv (the next day), predict
each next click from the clicks before it ("all"), and separately only the last click
("last"), ranking every item. HR@20 (= Recall@20), MRR@20, NDCG@20 for XLNet-MLM,
GPT-2-CLM and GRU trained by rayrec, next to two baselines computed here: most popular
(training click counts) and item-to-item co-occurrence (how often item j directly
followed the session's last item in training; popularity breaks ties and fills gaps).

The data goes through `rayrec etl` (the default workflow: consecutive repeats dropped,
sessions of 2+ clicks, the last 20 clicks kept); test.tsv is transformed with the
workflow fitted on train.tsv, so both share one item vocabulary.

    python benchmarks/yoochoose.py --epochs 5
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data", "yoochoose-100k")
MODELS = {
    "XLNet-MLM": dict(arch="xlnet", masking="mlm", mlm_probability=0.3),
    "GPT-2-CLM": dict(arch="gpt2", masking="clm"),
    "GRU": dict(arch="gru", masking="clm", n_layer=1),
}


def prepare(work: str) -> tuple[str, int]:
    """One dataset: train.tsv's days, then test.tsv as the day after the last one."""
    from rayrec.etl import EtlConfig, Workflow, default_workflow, run_etl

    cfg = EtlConfig(session_col="SessionId", item_col="ItemId", time_col="Time", valid_fraction=0.0,
                    test_fraction=0.0)
    data, test = os.path.join(work, "data"), os.path.join(work, "test")
    run_etl([os.path.join(DATA, "train.tsv")], data, cfg, default_workflow(cfg), progress=lambda m: None)
    workflow = Workflow.load(os.path.join(data, "workflow"))
    run_etl([os.path.join(DATA, "test.tsv")], test, cfg, workflow, fitted=True, progress=lambda m: None)
    last = max(int(d) for d in os.listdir(data) if d.isdigit())
    test_days = sorted(int(d) for d in os.listdir(test) if d.isdigit())
    os.makedirs(os.path.join(data, str(last + 1)))
    tables = [os.path.join(test, str(d), "train.parquet") for d in test_days]
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.concat_tables([pq.read_table(t) for t in tables]), os.path.join(data, str(last + 1),
                                                                                       "train.parquet"))
    return data, last


def baselines(train_items: list[np.ndarray], n_items: int, first: int, batch: dict, on: str) -> dict:
    from rayrec.metrics import finalize, metric_sums, target_ranks
    from rayrec.models.batch import eval_examples

    counts = np.zeros(n_items)
    follow = np.zeros((n_items, n_items))
    for items in train_items:
        counts += np.bincount(items[items > 0], minlength=n_items)
        a, b = items[:, :-1].ravel(), items[:, 1:].ravel()
        keep = (a > 0) & (b > 0)
        np.add.at(follow, (a[keep], b[keep]), 1)
    pop = counts / counts.max() * 0.5  # below 1: a single co-occurrence outranks any popularity
    pop[:first] = -np.inf
    inputs, targets = eval_examples(batch, "ItemId-list", ["ItemId-list"], on)
    lengths = (inputs["ItemId-list"] != 0).sum(1)
    last = inputs["ItemId-list"][np.arange(len(lengths)), lengths - 1]
    out = {}
    for name, scores in (("popularity", np.broadcast_to(pop, (len(last), n_items))),
                         ("co-occurrence", follow[last] + pop)):
        ranks = target_ranks(torch.from_numpy(np.ascontiguousarray(scores)), torch.from_numpy(targets))
        out[name] = finalize(metric_sums(ranks, ks=(20,)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--d-model", type=int, default=64)
    a = p.parse_args()
    from rayrec.accelerated import load_model
    from rayrec.models.config import ModelConfig
    from rayrec.schema import Schema
    from rayrec.train.config import TrainConfig
    from rayrec.train.data import load_batch, load_items, split_path
    from rayrec.train.evaluate import model_metric_sums
    from rayrec.metrics import finalize

    torch.set_num_threads(a.threads)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        data, last = prepare(work)
        item = Schema.load(data).item_id_column()
        first = int(item.properties.get("first_code", 1))
        train_items = [load_items(split_path(data, d, "train"), item.name, 20) for d in range(1, last + 1)]
        for name, extra in MODELS.items():
            from rayrec.train.trainer import run_training

            mcfg = ModelConfig(d_model=a.d_model, n_head=4, max_len=20, **{"n_layer": 2, **extra})
            tcfg = TrainConfig(workers=0, threads_per_worker=a.threads, epochs=a.epochs, batch_size=128, lr=2e-3,
                               train_days=f"1:{last}", window_days=last, eval_split="train", seed=0)
            started = time.perf_counter()
            run_training(data, os.path.join(work, name), mcfg, tcfg)
            model = load_model(os.path.join(work, name, "checkpoint"))
            test = load_batch(split_path(data, last + 1, "train"), model.features, [], 20)
            for on in ("all", "last"):
                model.cfg.eval_on = on
                rows.append({"model": name, "on": on, "seconds": round(time.perf_counter() - started, 1),
                             **finalize(model_metric_sums(model, test, ks=(20,)))})
        for on in ("all", "last"):
            test = {"ItemId-list": load_items(split_path(data, last + 1, "train"), item.name, 20)}
            for name, m in baselines(train_items, item.cardinality, first, test, on).items():
                rows.append({"model": name, "on": on, **m})
        shutil.rmtree(os.path.join(work, "data"), ignore_errors=True)
    print(f"{'model':>14} {'targets':>7} {'HR@20':>7} {'MRR@20':>7} {'NDCG@20':>8} {'examples':>8}")
    for r in sorted(rows, key=lambda r: (r["on"], -r["recall@20"])):
        print(f"{r['model']:>14} {r['on']:>7} {r['recall@20']:>7.4f} {r['mrr@20']:>7.4f} {r['ndcg@20']:>8.4f} "
              f"{r['count']:>8}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
