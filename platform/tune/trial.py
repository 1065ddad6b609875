"""One trial of a sweep: a rayrec training run, in the trial's own process (`workers: 0`)
or on its own Ray Train worker group, reporting each evaluation to Tune.

A trial's files live in SWEEP/trials/TRIAL_ID/: params.json (what it sets), rejected.json
(the model builder's reason, when the combination cannot be built), run/ (a complete run
directory once it finished, loadable by `rayrec evaluate` and `rayrec serve`) and, while it
runs, checkpoints/ where a restarted trial (a lost worker, a killed driver and `--resume`)
goes on from.

Only evaluation reports reach Tune: one per window (the days trained together, then the
next day evaluated) and, with `train.eval_every: epoch`, one per epoch inside it. A
checkpoint without an evaluation carries no metric, and Tune would call that an error.
Tune's time axis is `evaluation`, the index of an evaluation in the run's plan (the run
numbers them, so a restarted trial reports the same index again, where Tune's own
`training_iteration` would restart from one): every trial of a sweep plans the same days,
so evaluation k is the same point in the data for each of them.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass

from rayrec.models.config import ModelConfig
from rayrec.rundir import RunDir
from rayrec.train.config import TrainConfig

PARAMS, REJECTED, TIMES, LOG = "params.json", "rejected.json", "times.json", "trial.log"


@dataclass
class TrialSpec:
    """What every trial of a sweep is told (as JSON, across the process boundary)."""
    data: str                # the ETL output
    out: str                 # the sweep directory
    model: ModelConfig       # the base config, before the trial's parameters
    train: TrainConfig
    metric: str
    verbose: bool = False    # the trials' own training lines reach the driver (else trials/ID/trial.log)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "TrialSpec":
        d = json.loads(text)
        return cls(d["data"], d["out"], ModelConfig(**d["model"]), TrainConfig(**d["train"]), d["metric"],
                   d["verbose"])


def trial_dir(sweep: str, trial_id: str) -> str:
    return os.path.join(sweep, "trials", trial_id)


class TuneReporter:
    """A listener of an in-process run: each evaluation goes to Tune."""

    def __init__(self, metric: str):
        self.metric = metric

    def log(self, metrics: dict) -> None:
        if self.metric in metrics and metrics.get("eval_day") is not None:
            from ray import tune

            tune.report(numbers(metrics))


def numbers(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def eval_report_callback(metric: str):
    """Ray Train callback for a trial with workers: rank 0's evaluation reports go to Tune
    (built in the trial's process, where Tune's session is)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class EvalReportCallback(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if metrics and metric in metrics[0] and metrics[0].get("eval_day") is not None:
                super().after_report(run_context, [numbers(metrics[0])], None)

    return EvalReportCallback()


def run_trial(config: dict, spec: str) -> None:
    """Tune's trainable: `config` holds the trial's values, `spec` the TrialSpec."""
    import ray
    from ray import tune

    from rayrec.models.checkpoint import build_model
    from rayrec.schema import Schema
    from rayrec.train.trainer import run_training
    from rayrec.tune.space import apply, trial_params

    started = time.time()
    s = TrialSpec.from_json(spec)
    params = trial_params(config)
    here = trial_dir(s.out, tune.get_context().get_trial_id())
    os.makedirs(here, exist_ok=True)
    write_json(os.path.join(here, PARAMS), params)
    try:
        model_cfg, train_cfg = apply(s.model, s.train, params)
        build_model(Schema.load(s.data), model_cfg)   # the builder's own checks (a body that cannot be causal...)
    except ValueError as e:
        write_json(os.path.join(here, REJECTED), {"reason": str(e)})
        return
    reporter = TuneReporter(s.metric)
    if replay(here, reporter):   # finished before the driver was killed (Tune had not yet saved that)
        return
    callbacks = [eval_report_callback(s.metric)]   # a run with workers reports through them (fit.OnRayTrain)
    ran = time.time()
    with own_log(os.path.join(here, LOG), s.verbose):
        metrics = run_training(s.data, os.path.join(here, "run"), model_cfg, train_cfg, overwrite=True,
                               checkpoints=os.path.join(here, "checkpoints"),
                               listeners=[reporter], callbacks=callbacks, quiet=not s.verbose, owns_process=True)
    trained = sum(d.get("train_seconds", 0.0) for d in metrics["days"])
    write_json(os.path.join(here, TIMES), {"seconds": round(time.time() - started, 3),   # this attempt
                                           "run_seconds": round(time.time() - ran, 3),
                                           "train_seconds": round(trained, 3),
                                           "pid": os.getpid(),    # a reused trial process shows here
                                           "node": ray.get_runtime_context().get_node_id()})


def replay(here: str, reporter: TuneReporter) -> bool:
    """A restarted trial first tells Tune the windows it evaluated before (its run
    directory's, or its newest checkpoint's history), so that the scheduler and the curves
    see them; True when the trial had finished (nothing is trained again)."""
    from rayrec.train import checkpoints

    metrics_path = RunDir(os.path.join(here, "run")).metrics_path
    if os.path.exists(metrics_path):
        with open(metrics_path) as f:
            history = json.load(f)["days"]
    else:
        folder = os.path.join(here, "checkpoints")
        found = checkpoints.complete(folder, "in-process", checkpoints.CheckpointManager.PREFIX) or \
            checkpoints.complete(folder, "run")
        history = checkpoints.history(found[-1]) if found else []
    for record in history:
        reporter.log(record)
    return os.path.exists(metrics_path)


@contextlib.contextmanager
def own_log(path: str, verbose: bool):
    """A trial's training lines go to its own log: from several trials at once they would
    interleave into noise at the driver, whose progress lines say what happened."""
    if verbose:
        yield
        return
    with open(path, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        yield


def write_json(path: str, value) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2, default=str)
    os.replace(tmp, path)
