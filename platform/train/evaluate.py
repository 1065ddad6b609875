"""Evaluation: the model's and a most-popular baseline's ranking metrics on a split."""
from __future__ import annotations

import numpy as np
import torch

from rayrec.metrics import DEFAULT_KS, add_sums, metric_sums, target_ranks
from rayrec.models.batch import Batch, eval_examples, to_tensors
from rayrec.models.session_model import SessionModel


def model_metric_sums(model: SessionModel, batch: Batch, batch_size: int = 512, ks=DEFAULT_KS,
                      device: torch.device | None = None) -> dict:
    """Metric sums over a split's sessions; the inputs are cut before the target
    (`eval_examples`) on every list column, then scored in batches."""
    inputs, targets = eval_examples(batch, model.item_col, model.list_cols, model.cfg.eval_on)
    sums = metric_sums(torch.zeros(0, dtype=torch.long), ks)  # every key present even for an empty split
    model.eval()
    for i in range(0, len(targets), batch_size):
        x = to_tensors({k: v[i:i + batch_size] for k, v in inputs.items()})
        y = torch.from_numpy(targets[i:i + batch_size])
        if device is not None and device.type != "cpu":
            x, y = {k: v.to(device) for k, v in x.items()}, y.to(device)
        add_sums(sums, metric_sums(tuple(r.cpu() for r in target_ranks(model.next_item_scores(x), y)), ks))
    return sums


def item_counts(train_items: list[np.ndarray], n_items: int) -> np.ndarray:
    counts = np.zeros(n_items, dtype=np.float64)
    for items in train_items:
        counts += np.bincount(items[items > 0].ravel(), minlength=n_items)[:n_items]
    return counts


def popularity_metric_sums(counts: np.ndarray, items: np.ndarray, first_item: int, ks=DEFAULT_KS,
                           on: str = "last") -> dict:
    """Every session gets the same list: items by training frequency (ties at random)."""
    _, targets = eval_examples({"item": items}, "item", ["item"], on)
    scores = counts.copy()
    scores[:first_item] = -1.0
    ordered = np.sort(scores)
    above = len(ordered) - np.searchsorted(ordered, scores[targets], side="right")
    ties = np.searchsorted(ordered, scores[targets], side="right") - \
        np.searchsorted(ordered, scores[targets], side="left") - 1
    return metric_sums((torch.from_numpy(above), torch.from_numpy(ties)), ks)


def evaluate_run(run_dir: str, data_dir: str, days_spec: str | None = None, split: str = "test",
                 threads: int | str = "auto") -> dict:
    """Metrics of a saved run on `split` of each day, next to most-popular over its training
    days. The run and the data may be paths or storage URIs. `threads`: torch threads
    (auto: every usable core)."""
    import torch

    from rayrec.threads import threads_for

    before = torch.get_num_threads()
    torch.set_num_threads(threads_for(threads))
    try:
        return _evaluate_run(run_dir, data_dir, days_spec, split) | {"threads": torch.get_num_threads()}
    finally:
        torch.set_num_threads(before)


def _evaluate_run(run_dir: str, data_dir: str, days_spec: str | None, split: str) -> dict:
    from rayrec.accelerated import load_model
    from rayrec.files import local_copy
    from rayrec.metrics import finalize
    from rayrec.rundir import RunDir
    from rayrec.schema import Schema
    from rayrec.storage import display
    from rayrec.train.config import parse_days
    from rayrec.train.data import day_dirs, load_batch, load_items, split_path

    run = RunDir(run_dir)
    trained = run.metrics()["train_days"]   # a stopped run says so here, before its model loads
    with local_copy(run.checkpoint, "run checkpoint") as d:
        model = load_model(d)
    item = Schema.load(data_dir).item_id_column()
    if item.cardinality != model.n_items:
        raise ValueError(f"{display(data_dir)}: column {item.name!r} has {item.cardinality} codes but the model "
                         f"in {display(run_dir)} was trained with {model.n_items}; evaluate on the run's own dataset")
    available = day_dirs(data_dir)
    if days_spec is None:  # default: the day after the last training day, else the last day
        nxt = max(trained) + 1
        days = [nxt] if nxt in available else available[-1:]
    else:
        days = parse_days(days_spec, available)
    max_len = model.cfg.max_len
    counts = item_counts([load_items(split_path(data_dir, d, "train"), item.name, max_len)
                          for d in trained if d in available], model.n_items)
    rows = []
    for day in days:
        path = split_path(data_dir, day, split)
        batch = load_batch(path, model.features, [h.target for h in model.cfg.heads], max_len)
        rows.append({"day": day, "split": split, **finalize(model_metric_sums(model, batch)),
                     "popularity": finalize(popularity_metric_sums(counts, batch[model.item_col], model.first_item,
                                                                   on=model.cfg.eval_on))})
    return {"run": run_dir, "data": data_dir, "days": rows}


def format_evaluation(result: dict) -> str:
    keys = ["recall@10", "recall@20", "ndcg@10", "ndcg@20"]
    lines = [f"{'day':>4} {'model':>11} " + " ".join(f"{k:>10}" for k in keys) + f" {'sessions':>9}"]
    for r in result["days"]:
        for name, m in (("model", r), ("popularity", r["popularity"])):
            lines.append(f"{r['day']:>4} {name:>11} " + " ".join(f"{m[k]:>10.4f}" for k in keys) + f" {m['count']:>9}")
    if "threads" in result:
        lines.append(f"(scored on {result['threads']} torch thread(s))")
    return "\n".join(lines)
