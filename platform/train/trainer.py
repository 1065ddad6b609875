"""`rayrec train`: plan the days, run the loop on Ray Train, and write the run directory.

RUN/ (rundir.py names its parts) holds checkpoint/, metrics.json (per day and averaged,
next to the most-popular baseline, and the accel path each worker ran), and copies of the
dataset's schema and fitted workflow, so that serving needs the run directory alone. The data and the run
may be local paths or storage URIs: the run is written in a local temporary directory
and published whole (renamed, or uploaded with a manifest), also when it stops early.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
from dataclasses import asdict

from rayrec.files import require_complete, staged_output
from rayrec.metrics import REPORTED
from rayrec.rundir import RunDir, workflow_of
from rayrec.storage import display, is_uri, join, locate, parent_and_name
from rayrec.models.config import ModelConfig
from rayrec.models.features import resolve_features
from rayrec.schema import Schema
from rayrec.train.config import TrainConfig, parse_days
from rayrec.train.data import day_dirs, load_items, split_path
from rayrec.train.evaluate import item_counts, popularity_metric_sums
from rayrec.train.fit import fit, latest_checkpoint, runner
from rayrec.train.session import Listener
from rayrec.train.spec import RunSpec
from rayrec.train.tracking import Tracker, TrackerCallback
from rayrec.metrics import finalize
from rayrec.plot import plot_days


def plan_days(data_dir: str, spec: str | None, window: int = 1) -> list[tuple[list[int], int | None]]:
    """Windows of `window` consecutive selected days, each with the day after it to evaluate on."""
    available = day_dirs(data_dir)
    days = parse_days(spec, available)
    windows = [days[i:i + window] for i in range(0, len(days), window)]
    return [(w, w[-1] + 1 if w[-1] + 1 in available else None) for w in windows]


def run_training(data_dir: str, out: str, model_cfg: ModelConfig, train_cfg: TrainConfig,
                 address: str | None = None, overwrite: bool = False, resume: str | None = None,
                 checkpoints: str | None = None, listeners: list[Listener] = (), callbacks: list = (),
                 quiet: bool = False, owns_process: bool = False) -> dict:
    """Train day by day into the run directory `out`. With `resume` (a finished or
    stopped run's directory) training continues from that run's checkpoint: the days it
    trained are kept, a window it stopped inside goes on from the saved batch, the
    remaining planned days are trained.

    `checkpoints` (a local directory) keeps the run's checkpoints where a later call with
    the same argument finds them and resumes, even after this process was killed; it is
    emptied once the run is published. `listeners` and `callbacks` see the reports (fit.py);
    `quiet` keeps the workers' progress lines to themselves; `owns_process` says the calling
    process is rayrec's own (the CLI, a trial), whose malloc settings an in-process run may tune.

    When training fails or is interrupted after a checkpoint, `out` is still written,
    holding that checkpoint and stopped.json (no metrics.json), and TrainingStopped says
    how to resume it."""
    data_dir = data_dir if is_uri(data_dir) else os.path.abspath(data_dir)
    schema, item, features, days = check_inputs(data_dir, model_cfg, train_cfg)
    config = {"model": asdict(model_cfg), "train": asdict(train_cfg), "data": data_dir}

    stopped = None
    with staged_output(out, overwrite=overwrite) as tmp, \
            checkpoint_storage(train_cfg, out, tmp, checkpoints) as storage:
        name = "run" if checkpoints else "rayrec-" + os.path.basename(tmp).lstrip(".")
        scratch = runner(train_cfg).scratch(tmp, checkpoints)
        tracker = Tracker(train_cfg, RunDir(tmp).tensorboard, os.path.basename(os.path.abspath(out)))
        tracker.start(config)
        spec = RunSpec(model_cfg, train_cfg, data_dir, item.name, features, days, scratch,
                       RunDir(resume if is_uri(resume) else os.path.abspath(resume)).checkpoint if resume else None,
                       quiet=quiet, owns_process=owns_process)
        if tracker.enabled:   # in-process, the loop tells it; with workers, Ray Train's controller does
            listeners, callbacks = [*listeners, tracker], [*callbacks, TrackerCallback(tracker)]
        try:
            history = fit(spec, storage, name, RunDir(tmp).checkpoint, listeners=listeners,
                          callbacks=callbacks, address=address)
        except (Exception, KeyboardInterrupt, SystemExit) as e:  # Ray's Ctrl-C handler aborts the run, then exits
            tracker.finish([], status="FAILED" if isinstance(e, Exception) else "KILLED")
            stopped = keep_stopped(tmp, spec, storage, name, config, e)
            if stopped is None:
                raise
        else:
            for sub in ("scratch", "ray"):
                shutil.rmtree(os.path.join(tmp, sub), ignore_errors=True)
            metrics = finish_run(tmp, history, data_dir, item.name, features, model_cfg, train_cfg, config,
                                 schema, tracker)
    if stopped is not None:
        raise TrainingStopped(f"training stopped ({stopped['reason']}); the last checkpoint ({stopped['at']}) is "
                              f"kept in {out}: continue with `rayrec train --resume {out} --out NEW_RUN`") \
            from stopped["error"]
    if checkpoints:
        shutil.rmtree(checkpoints, ignore_errors=True)
    return metrics


def check_inputs(data_dir: str, model_cfg: ModelConfig, train_cfg: TrainConfig):
    """The dataset's schema, item column, features and planned windows; a bad feature
    name or a missing day fails here, before anything starts."""
    require_complete(data_dir, "ETL output")
    schema = Schema.load(data_dir)
    item = schema.item_id_column()
    if item.cardinality is None:
        raise ValueError(f"schema column {item.name!r} has no domain: cannot size the item embeddings")
    features = resolve_features(schema, model_cfg)
    for head in model_cfg.heads:
        if head.target not in schema.names:
            raise ValueError(f"model.heads: target column {head.target!r} is not in {display(data_dir)}'s schema")
    days = plan_days(data_dir, train_cfg.train_days, train_cfg.window_days)
    for window, eval_day in days:
        for day in window:
            split_path(data_dir, day, "train")
        if eval_day is not None:
            split_path(data_dir, eval_day, train_cfg.eval_split)
    return schema, item, features, days


@contextlib.contextmanager
def checkpoint_storage(tcfg: TrainConfig, out: str, tmp: str, checkpoints: str | None = None):
    """Where Ray keeps the run's checkpoints: `train.storage`, the caller's `checkpoints`,
    else inside the local run directory being written, or, for a run published to a URI,
    a temporary prefix beside it that every node reaches (removed afterwards)."""
    if tcfg.storage or checkpoints:
        yield tcfg.storage or os.path.abspath(checkpoints)
        return
    if not is_uri(out) or out.startswith("file://"):
        yield os.path.join(tmp, "ray")
        return
    parent, name = parent_and_name(out)
    scratch = join(parent, f".{name}.tmp-{os.path.basename(tmp)[-8:]}")
    try:
        yield scratch
    finally:
        locate(scratch).delete()


class TrainingStopped(RuntimeError):
    """Training ended early; the run directory holds its last checkpoint for --resume."""


def finish_run(tmp: str, history: list[dict], data_dir: str, item_col: str, features, model_cfg,
               train_cfg, config: dict, schema: Schema, tracker: Tracker) -> dict:
    """The rest of a finished run's directory (its checkpoint is in place): metrics (JSON,
    CSV, PNG), schema, workflow."""
    metrics = summarize(history, data_dir, item_col, features[0].cardinality, features[0].first_code,
                        model_cfg, train_cfg)
    metrics["config"] = config
    run = RunDir(tmp)
    write_csv(metrics, run.csv_path)
    if metrics["average"]:
        plot_days(metrics, run.plot_path)
    schema.save(tmp)
    workflow = locate(workflow_of(data_dir))
    if workflow.is_dir():
        workflow.download(run.workflow)
    with open(run.metrics_path, "w") as f:   # last: its presence marks the run complete
        json.dump(metrics, f, indent=2)
    tracker.finish(run.sidecars())
    return metrics


def keep_stopped(tmp: str, spec: RunSpec, storage: str, name: str, config: dict,
                 error: BaseException) -> dict | None:
    """Keep the newest checkpoint the run saved and the configs in the run directory being
    written, so that it can be resumed; None when there is none to keep."""
    dest = RunDir(tmp).checkpoint
    shutil.rmtree(dest, ignore_errors=True)
    at = latest_checkpoint(spec, storage, name, dest)
    if at is None:
        return None
    for sub in ("scratch", "ray"):
        shutil.rmtree(os.path.join(tmp, sub), ignore_errors=True)
    reason = f"{type(error).__name__}: {error}" if isinstance(error, Exception) else "interrupted"
    with open(RunDir(tmp).stopped_path, "w") as f:
        json.dump({"config": config, "reason": reason[:2000], "checkpoint": at}, f, indent=2)
    return {"reason": reason.splitlines()[0][:300], "at": at, "error": error}


def resume_configs(run_dir: str) -> tuple[ModelConfig, TrainConfig, str]:
    """A finished or stopped run's model and train configs and data directory (a path or URI)."""
    require_complete(run_dir, "run directory")
    run = RunDir(run_dir)
    found = run.stopped() if not locate(run.metrics_path).is_file() else run.metrics()
    if not run.has_model or found is None:
        raise FileNotFoundError(f"{display(run_dir)}: not a rayrec run directory (no checkpoint/, or neither "
                                f"metrics.json nor stopped.json)")
    config = found["config"]
    return ModelConfig(**config["model"]), TrainConfig(**config["train"]), config["data"]


def summarize(history: list[dict], data_dir: str, item_col: str, n_items: int, first_item: int,
              mcfg: ModelConfig, tcfg: TrainConfig) -> dict:
    """Attach the popularity baseline (counts of every day trained so far) and average."""
    seen = []
    for rec in history:
        seen += [load_items(split_path(data_dir, d, "train"), item_col, mcfg.max_len)
                 for d in rec.get("window", [rec["train_day"]])]
        if rec.get("eval_day") is None:
            continue
        items = load_items(split_path(data_dir, rec["eval_day"], tcfg.eval_split), item_col, mcfg.max_len)
        rec["popularity"] = finalize(popularity_metric_sums(item_counts(seen, n_items), items, first_item,
                                                            on=mcfg.eval_on))
    evaluated = [r for r in history if r.get("eval_day") is not None]
    average = {k: sum(r[k] for r in evaluated) / len(evaluated) for k in REPORTED} if evaluated else {}
    pop_average = {k: sum(r["popularity"][k] for r in evaluated) / len(evaluated) for k in REPORTED} \
        if evaluated else {}
    return {"days": history, "average": average, "popularity_average": pop_average,
            "train_days": [d for r in history for d in r.get("window", [r["train_day"]])],
            "accel": history[-1].get("accel", []) if history else []}




def write_csv(metrics: dict, path: str) -> None:
    """One row per trained day (window), the model next to most-popular, then the mean."""
    head = ["train_day", "eval_day", "attempt", "train_loss", "first_loss", "train_sequences", "sequences_per_s",
            *REPORTED, "popularity_recall@20", "popularity_ndcg@20"]
    rows = []
    for r in metrics["days"]:
        pop = r.get("popularity", {})
        rows.append([r.get("train_day"), r.get("eval_day"), r.get("attempt", 0), r.get("train_loss"),
                     r.get("first_loss"), r.get("train_sequences"), r.get("sequences_per_s"),
                     *[r.get(k) for k in REPORTED], pop.get("recall@20"), pop.get("ndcg@20")])
    if metrics["average"]:
        a, p = metrics["average"], metrics["popularity_average"]
        rows.append(["mean", "", "", "", "", "", "", *[a.get(k) for k in REPORTED], p.get("recall@20"),
                     p.get("ndcg@20")])
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(head)
        w.writerows([["" if v is None else v for v in row] for row in rows])


def format_table(metrics: dict, ceiling: dict | None = None) -> str:
    """Per-day metrics of the model next to popularity (and the ceiling when known)."""
    cols = ["recall@20", "ndcg@20", "mrr@20"]
    head = f"{'train':>5} {'eval':>4} {'loss':>6} " + " ".join(f"{c:>10}" for c in cols) + \
        f" {'pop r@20':>9} {'pop n@20':>9}" + (f" {'best r@20':>9} {'best n@20':>9}" if ceiling else "")
    lines = [head]
    for r in metrics["days"]:
        if r.get("eval_day") is None:
            lines.append(f"{r['train_day']:>5} {'-':>4} {r['train_loss']:>6.3f}")
            continue
        row = f"{r['train_day']:>5} {r['eval_day']:>4} {r['train_loss']:>6.3f} " + \
            " ".join(f"{r[c]:>10.4f}" for c in cols) + \
            f" {r['popularity']['recall@20']:>9.4f} {r['popularity']['ndcg@20']:>9.4f}"
        if ceiling:
            best = ceiling.get(str(r["eval_day"]), {})
            row += f" {best.get('recall@20', float('nan')):>9.4f} {best.get('ndcg@20', float('nan')):>9.4f}"
        lines.append(row)
    if metrics["average"]:
        a, p = metrics["average"], metrics["popularity_average"]
        lines.append(f"{'mean':>5} {'':>4} {'':>6} " + " ".join(f"{a[c]:>10.4f}" for c in cols) +
                     f" {p['recall@20']:>9.4f} {p['ndcg@20']:>9.4f}")
    return "\n".join(lines)
