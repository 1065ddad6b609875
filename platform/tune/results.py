"""A sweep's results: one row per trial (results.csv, results.json), the best trial's
complete config (best.yaml), sweep.png and the leaderboard printed at the end.

A trial's status and curve come from its own files (trial.py), not from Tune's records:
they hold after a restart (Tune renumbers a restarted trial's reports; the run's history
does not), and a stopped trial's history is in its newest checkpoint. Tune adds only what
it alone knows: a trial's error.

A trial's score is its metric averaged over the windows it evaluated, as `rayrec train`
reports it; finished trials rank before the others.
"""
from __future__ import annotations

import csv
import glob
import json
import math
import os
import shutil
from dataclasses import asdict

import yaml

from rayrec.models.config import ModelConfig
from rayrec.rundir import RunDir, workflow_of
from rayrec.train.config import TrainConfig
from rayrec.tune.space import apply, describe
from rayrec.tune.trial import PARAMS, REJECTED, TIMES, trial_dir, write_json

FINISHED, STOPPED, ERROR, REJECTED_STATUS, NOT_RUN = "finished", "stopped early", "error", "rejected", "not run"


def compile_results(out: str, state: dict, grid, metric: str, mode: str, wall: float) -> dict:
    """Collect every trial, publish the stopped ones' run directories, write the outputs."""
    model, train = ModelConfig(**state["model"]), TrainConfig(**state["train"])
    errors, reported = {}, {}
    for result in grid:
        if not result.path:
            continue
        tid = os.path.basename(result.path.rstrip("/"))
        if result.error is not None:
            errors[tid] = error_message(result.error)
        reported[tid] = tune_reports(result, metric)
    rows = []
    for tid in sorted(os.listdir(os.path.join(out, "trials"))) if os.path.isdir(os.path.join(out, "trials")) else []:
        rows.append(trial_row(out, tid, model, train, metric, errors.get(tid), reported.get(tid, [])))
    sign = 1 if mode == "max" else -1
    rows.sort(key=lambda r: (r["status"] != FINISHED, -sign * r["score"] if r["score"] is not None else math.inf))
    compiled = {"metric": metric, "mode": mode, "wall_seconds": round(wall, 2), "trials": rows,
                "planned": len(state["trials"]), "keys": state["keys"],
                "base": {"model.arch": model.arch, "model.masking": model.masking}}
    write_outputs(out, compiled, model, train)
    return compiled


def error_message(error: BaseException) -> str:
    """The exception a trial raised, as `Type: message` (Ray wraps it with the traceback)."""
    cause = getattr(error, "cause", None) or error
    text = f"{type(cause).__name__}: {cause}"
    lines = [ln for ln in str(cause).splitlines() if ln.strip()]
    if len(lines) > 1:   # a traceback: its last line is the exception
        text = lines[-1].strip()
    return text[:1000]


KEPT = ("evaluation", "train_day", "eval_day", "recall@20", "ndcg@20", "mrr@20")


def tune_reports(result, metric: str) -> list[dict]:
    """The evaluations Tune received, one per `evaluation` index (a restarted trial
    reports again what it had reported), in order."""
    frame = result.metrics_dataframe
    if frame is None or metric not in frame or "evaluation" not in frame:
        return []
    by = {}
    for rec in frame.to_dict("records"):
        if rec.get(metric) == rec.get(metric) and rec.get("evaluation") == rec.get("evaluation"):  # not NaN
            by[int(rec["evaluation"])] = {k: rec[k] for k in (*KEPT, metric) if k in rec}
    return [by[k] for k in sorted(by)]


def score_of(reports: list[dict], metric: str) -> float | None:
    """The metric at the end of each window reached (its last evaluation), averaged."""
    last = {}
    for r in reports:
        last[r["train_day"]] = r[metric]
    return sum(last.values()) / len(last) if last else None


def trial_row(out: str, tid: str, model: ModelConfig, train: TrainConfig, metric: str, error: str | None,
              reported: list[dict]) -> dict:
    here = trial_dir(out, tid)
    params = read(os.path.join(here, PARAMS)) or {}
    row = {"trial": tid, "params": params, "status": NOT_RUN, "score": None, "reports": [], "seconds": None,
           "run_seconds": None,
           "train_seconds": None, "run_dir": None, "message": None}
    if os.path.exists(os.path.join(here, REJECTED)):
        return row | {"status": REJECTED_STATUS, "message": read(os.path.join(here, REJECTED))["reason"]}
    run = os.path.join(here, "run")
    metrics = read(RunDir(run).metrics_path)
    if metrics is not None:
        history, status = metrics["days"], FINISHED
    else:
        history = publish_stopped(here, model, train, params, error)
        status = ERROR if error else STOPPED if reported or os.path.isdir(run) else NOT_RUN
    from_history = [{"evaluation": r.get("evaluation", i + 1), **{k: r[k] for k in (*KEPT, metric) if k in r}}
                    for i, r in enumerate(history or []) if r.get("eval_day") is not None]
    known = {r["evaluation"] for r in reported}
    reports = sorted(reported + [r for r in from_history if r["evaluation"] not in known],
                     key=lambda r: r["evaluation"])
    times = read(os.path.join(here, TIMES)) or {}
    trained = sum(r.get("train_seconds", 0.0) for r in history or [])
    return row | {"status": status, "reports": reports, "message": error,
                  "score": score_of(reports, metric),
                  "seconds": times.get("seconds"), "run_seconds": times.get("run_seconds"), "train_seconds": round(trained, 3) if history else None,
                  "run_dir": run if os.path.isdir(run) else None}


def publish_stopped(here: str, model: ModelConfig, train: TrainConfig, params: dict, error: str | None) -> list:
    """A trial stopped early (or one that failed after a checkpoint): its newest
    checkpoint becomes run/ with stopped.json, resumable with `rayrec train --resume`;
    the trial's scratch is removed. Returns the history that checkpoint holds."""
    from rayrec.files import staged_output
    from rayrec.train import checkpoints

    for leftover in glob.glob(os.path.join(here, ".run.tmp-*")):
        shutil.rmtree(leftover, ignore_errors=True)
    run = os.path.join(here, "run")
    if os.path.isdir(run):   # published on an earlier compile
        return checkpoints.history(RunDir(run).checkpoint)
    found = checkpoints.complete(os.path.join(here, "checkpoints"), "in-process", checkpoints.CheckpointManager.PREFIX) \
        or checkpoints.complete(os.path.join(here, "checkpoints"), "run")
    if not found:
        return []
    model_cfg, train_cfg = apply(model, train, params)
    data = read(os.path.join(os.path.dirname(os.path.dirname(here)), "sweep.json"))["sweep"]["data"]
    with staged_output(run, overwrite=True) as tmp:
        staged = RunDir(tmp)
        shutil.copytree(found[-1], staged.checkpoint)
        write_json(staged.stopped_path,
                   {"config": {"model": asdict(model_cfg), "train": asdict(train_cfg), "data": os.path.abspath(data)},
                    "reason": error or "stopped early by the sweep's scheduler",
                    "checkpoint": checkpoints.describe(found[-1])})
        from rayrec.schema import Schema

        Schema.load(data).save(tmp)
        if os.path.isdir(workflow_of(data)):
            shutil.copytree(workflow_of(data), staged.workflow)
    shutil.rmtree(os.path.join(here, "checkpoints"), ignore_errors=True)
    return checkpoints.history(RunDir(run).checkpoint)


def read(path: str):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_outputs(out: str, compiled: dict, model: ModelConfig, train: TrainConfig) -> None:
    write_json(os.path.join(out, "results.json"), compiled)
    write_csv(os.path.join(out, "results.csv"), compiled)
    best = next((r for r in compiled["trials"] if r["status"] == FINISHED), None)
    if best is not None:
        m, t = apply(model, train, best["params"])
        with open(os.path.join(out, "best.yaml.tmp"), "w") as f:
            f.write(f"# best trial {best['trial']}: {compiled['metric']} {best['score']:.6f} "
                    f"(mean over its evaluated windows)\n")
            yaml.safe_dump({"model": asdict(m), "train": asdict(t)}, f, sort_keys=False)
        os.replace(os.path.join(out, "best.yaml.tmp"), os.path.join(out, "best.yaml"))
    from rayrec.tune.plot import plot_sweep

    plot_sweep(compiled, os.path.join(out, "sweep.png"))


def write_csv(path: str, compiled: dict) -> None:
    metric, keys = compiled["metric"], compiled["keys"]
    head = ["trial", "status", f"score_{metric}", f"reports_{metric}", "seconds", "train_seconds", *keys,
            "run_dir", "message"]
    with open(path + ".tmp", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(head)
        for r in compiled["trials"]:
            w.writerow([r["trial"], r["status"], "" if r["score"] is None else r["score"],
                        ";".join(f"{x[metric]:.6f}" for x in r["reports"]),
                        "" if r["seconds"] is None else r["seconds"],
                        "" if r["train_seconds"] is None else r["train_seconds"],
                        *[r["params"].get(k, "") for k in keys], r["run_dir"] or "", r["message"] or ""])
    os.replace(path + ".tmp", path)


def leaderboard(compiled: dict, metric: str, top: int = 10) -> str:
    """The best configurations; trials that differ only in train.seed form one row (mean ± std)."""
    groups: dict[str, list[dict]] = {}
    for r in compiled["trials"]:
        if r["status"] in (FINISHED, STOPPED) and r["score"] is not None:
            key = json.dumps({k: v for k, v in sorted(r["params"].items()) if k != "train.seed"}, default=str)
            groups.setdefault(key, []).append(r)
    rows = []
    for key, members in groups.items():
        scores = [m["score"] for m in members]
        mean = sum(scores) / len(scores)
        std = math.sqrt(sum((s - mean) ** 2 for s in scores) / (len(scores) - 1)) if len(scores) > 1 else 0.0
        finished = all(m["status"] == FINISHED for m in members)
        rows.append((not finished, -mean if compiled["mode"] == "max" else mean, mean, std, members, key))
    rows.sort(key=lambda r: r[:2])
    counts = {}
    for r in compiled["trials"]:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    lines = [f"sweep: {len(compiled['trials'])} trial(s) in {compiled['wall_seconds']:.0f} s: "
             + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
             f"{'rank':>4}  {metric:>16}  {'n':>2}  {'status':<13}  parameters"]
    for i, (_, _, mean, std, members, key) in enumerate(rows[:top], 1):
        value = f"{mean:.4f} ± {std:.4f}" if len(members) > 1 else f"{mean:.4f}"
        status = FINISHED if all(m["status"] == FINISHED for m in members) else members[0]["status"]
        params = describe(json.loads(key))
        lines.append(f"{i:>4}  {value:>16}  {len(members):>2}  {status:<13}  {params}")
    return "\n".join(lines)
