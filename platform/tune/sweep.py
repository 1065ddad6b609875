"""`rayrec tune`: expand the space into trials, run them on Ray Tune, and write SWEEP/.

SWEEP/ holds sweep.json (the sweep as started: options, base configs, the trial list),
tune/ (Ray Tune's experiment state, which `--resume` restores), trials/ID/ (each trial's
files, trial.py), and the results (results.py) once the sweep ends.

Everything the user can get wrong is checked before a trial starts: the space, the
metric, the base configs and the resources the trials ask for against what the cluster has.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass

from ray.tune.progress_reporter import TrialProgressCallback

from rayrec.models.config import ModelConfig
from rayrec.rundir import RunDir
from rayrec.train.config import TrainConfig
from rayrec.tune.space import Space, apply, base_values, describe, load_space, trial_params
from rayrec.tune.trial import REJECTED, TrialSpec, run_trial, trial_dir, write_json

SEARCHES, SCHEDULERS, MODES = ("random", "grid", "optuna"), ("fifo", "asha", "median"), ("max", "min")
STATE = "sweep.json"


@dataclass
class SweepConfig:
    data: str
    out: str
    space: str
    samples: int | None = None        # default: 1 for grid, 8 for random and optuna
    search: str = "random"
    scheduler: str = "fifo"
    metric: str = "ndcg@20"
    mode: str = "max"
    concurrent: int | None = None     # default: as many trials as the cluster's CPUs (GPUs) hold
    workers_per_trial: int = 0        # 0: each trial trains in its own process
    cpus_per_worker: int = 1          # torch threads (and Ray CPUs) per worker
    gpus_per_worker: float = 0.0
    address: str | None = None
    seed: int = 0                     # draws the trials (each trial's train.seed is its own key)
    grace: int = 1                    # asha/median: evaluated windows before a trial may be stopped
    verbose: bool = False

    def __post_init__(self):
        for name, value, allowed in (("--search", self.search, SEARCHES), ("--scheduler", self.scheduler, SCHEDULERS),
                                     ("--mode", self.mode, MODES)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        if self.samples is not None and self.samples < 1 or self.concurrent is not None and self.concurrent < 1:
            raise ValueError("--samples and --concurrent must be >= 1")
        if self.workers_per_trial < 0 or self.cpus_per_worker < 1 or self.gpus_per_worker < 0 or self.grace < 1:
            raise ValueError("--workers-per-trial >= 0, --cpus-per-worker >= 1, --gpus-per-worker >= 0, "
                             "--grace >= 1")


def trial_configs(cfg: SweepConfig, model: ModelConfig, train: TrainConfig) -> tuple[ModelConfig, TrainConfig]:
    """The base configs with the sweep's resources per trial."""
    train = dataclasses.replace(train, workers=cfg.workers_per_trial, threads_per_worker=cfg.cpus_per_worker,
                                use_gpu=cfg.gpus_per_worker > 0)
    return model, train


def prepare(cfg: SweepConfig, model: ModelConfig, train: TrainConfig) -> dict:
    """Check everything and expand the trials; the state written to SWEEP/sweep.json."""
    from rayrec.metrics import REPORTED
    from rayrec.train.trainer import check_inputs

    if cfg.metric not in REPORTED:
        raise ValueError(f"--metric {cfg.metric!r} is not reported by training; choose one of {', '.join(REPORTED)}")
    space = load_space(cfg.space)
    if cfg.search == "grid":
        space = as_grid(space)
    model, train = trial_configs(cfg, model, train)
    check_inputs(os.path.abspath(cfg.data), model, train)
    drawn = any(p.kind in ("choice", "uniform", "loguniform", "randint") for p in space.params)
    samples = cfg.samples or (8 if drawn or cfg.search == "optuna" else 1)  # grids and fixed values: each once
    if cfg.search == "optuna":
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise ValueError("--search optuna needs Optuna: pip install 'rayrec[tune]'") from None
        trials = []   # Optuna draws them as the sweep goes
    else:
        trials = space.trials(samples, cfg.seed, base_values(model, train))
        for i, params in enumerate(trials):  # a value out of its field's range stops the sweep before it starts
            try:
                apply(model, train, params)
            except ValueError as e:
                raise ValueError(f"{cfg.space}: trial {i} ({describe(params)}): {e}") from None
    return {"sweep": asdict(cfg), "model": asdict(model), "train": asdict(train), "trials": trials,
            "keys": space.keys, "samples": samples}


def as_grid(space: Space) -> Space:
    """--search grid: every choice is a grid; a continuous distribution cannot be one."""
    params = []
    for p in space.params:
        if p.kind in ("uniform", "loguniform", "randint"):
            raise ValueError(f"{space.source}: {p.where}: --search grid needs listed values (grid or choice), "
                             f"not {p.kind}")
        params.append(dataclasses.replace(p, kind="grid") if p.kind == "choice" else p)
    return Space(params, space.source)


def run_sweep(cfg: SweepConfig | None, model: ModelConfig | None, train: TrainConfig | None,
              resume: str | None = None, overwrite: bool = False) -> dict:
    """Run (or, with `resume`, finish) a sweep; returns the compiled results."""
    from rayrec.tune.results import compile_results, leaderboard

    if resume:
        state = read_state(resume)
        cfg = SweepConfig(**state["sweep"])
    else:
        state = prepare(cfg, model, train)
        if os.path.exists(cfg.out) and not overwrite:   # before the cluster starts
            raise FileExistsError(f"{cfg.out} exists: pass --overwrite to replace it, or --resume {cfg.out} "
                                  "to finish it")
    model, train = ModelConfig(**state["model"]), TrainConfig(**state["train"])
    placement = connect(cfg, train)          # the cluster can hold what the trials ask for
    if not resume:
        start_dir(cfg.out, overwrite)
        write_json(os.path.join(cfg.out, STATE), state)
    out = os.path.abspath(cfg.out)
    started = time.time()
    results = run_tune(cfg, out, state, model, train, placement, resumed=bool(resume))
    compiled = compile_results(out, state, results, cfg.metric, cfg.mode, time.time() - started)
    print(leaderboard(compiled, cfg.metric))
    print(f"sweep written to {cfg.out} (results.csv, results.json, best.yaml, sweep.png)")
    return compiled


def start_dir(out: str, overwrite: bool) -> None:
    import shutil

    if os.path.exists(out):
        if not overwrite:
            raise FileExistsError(f"{out} exists: pass --overwrite to replace it, or --resume {out} to finish it")
        shutil.rmtree(out)
    os.makedirs(out)


def read_state(sweep: str) -> dict:
    path = os.path.join(sweep, STATE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{sweep}: not a rayrec sweep (no {STATE})")
    with open(path) as f:
        return json.load(f)


def connect(cfg: SweepConfig, train: TrainConfig) -> tuple[dict, int]:
    """Join (or start) the cluster; what one trial takes and how many run at once."""
    from rayrec.raylocal import init_ray
    from rayrec.threads import wait_env

    quiet(cfg.verbose)
    # the trials' output is in their trial.log; what a trial process prints as Tune ends it
    # (Ray's SIGTERM handler inside a weakref callback) is noise at the driver
    # a trial that trains in its own process (workers_per_trial 0) is a Tune actor: the job's
    # environment is where its OpenMP wait policy can reach it before torch loads
    init_ray(cfg.address, log_to_driver=cfg.verbose, env=wait_env(train.omp_wait))
    return resources(cfg, train)


def run_tune(cfg: SweepConfig, out: str, state: dict, model: ModelConfig, train: TrainConfig,
             placement: tuple[dict, int], resumed: bool):
    """The trials on Ray Tune; returns Tune's ResultGrid."""
    from ray import tune

    per_trial, concurrent = placement
    spec = TrialSpec(os.path.abspath(cfg.data), out, model, train, cfg.metric, cfg.verbose).to_json()
    trainable = tune.with_resources(tune.with_parameters(run_trial, spec=spec), per_trial)
    experiment = os.path.join(out, "tune")
    if resumed and tune.Tuner.can_restore(experiment):
        tuner = tune.Tuner.restore(experiment, trainable, resume_unfinished=True, resume_errored=False,
                                   restart_errored=False)
    else:
        search, param_space, samples = None, {"params": tune.grid_search(state["trials"])}, 1
        if cfg.search == "optuna":
            from ray.tune.search.optuna import OptunaSearch

            from rayrec.tune.space import OptunaSpace

            space = load_space(cfg.space)
            search = OptunaSearch(OptunaSpace(space, base_values(model, train)), metric=cfg.metric, mode=cfg.mode,
                                  seed=cfg.seed)
            param_space, samples = {}, state["samples"]
        tuner = tune.Tuner(
            trainable, param_space=param_space,
            tune_config=tune.TuneConfig(scheduler=scheduler(cfg, state, train), max_concurrent_trials=concurrent,
                                        search_alg=search, num_samples=samples,
                                        # an in-process trial's process (torch, transformers and
                                        # the dataset's page cache warm) takes the next trial
                                        reuse_actors=cfg.workers_per_trial == 0,
                                        trial_name_creator=lambda t: t.trial_id,
                                        trial_dirname_creator=lambda t: t.trial_id),
            run_config=tune.RunConfig(name="tune", storage_path=out, verbose=0 if not cfg.verbose else 1,
                                      callbacks=[Progress(out, cfg.metric, cfg.mode, len(state["trials"]) or state["samples"])],
                                      failure_config=tune.FailureConfig(max_failures=train.max_failures
                                                                        if train.workers == 0 else 0)))
    return tuner.fit()


def resources(cfg: SweepConfig, train: TrainConfig) -> tuple[dict, int]:
    """What one trial takes, and how many run at once: --concurrent, else as many as the
    cluster holds. A trial with workers holds no CPU itself (its workers do); on a small
    cluster such trials run one at a time, since a stopped Train trial's worker group is
    released late (ray #54305, #65443)."""
    import ray

    have = ray.cluster_resources()
    cpus, gpus = have.get("CPU", 0), have.get("GPU", 0)
    w = cfg.workers_per_trial
    need_cpu = max(w, 1) * cfg.cpus_per_worker
    need_gpu = max(w, 1) * cfg.gpus_per_worker
    fits = int(min(cpus // need_cpu, gpus // need_gpu if need_gpu else float("inf")))
    if fits < 1:
        raise ValueError(f"one trial needs {need_cpu} CPU(s)" + (f" and {need_gpu} GPU(s)" if need_gpu else "") +
                         f"; the cluster has {cpus:g} CPU(s) and {gpus:g} GPU(s)")
    concurrent = cfg.concurrent or (fits if w == 0 or fits >= 2 * 2 else 1)
    if concurrent > fits:
        raise ValueError(f"--concurrent {concurrent} x {need_cpu} CPU(s) per trial"
                         + (f" ({w} worker(s) x {cfg.cpus_per_worker})" if w else "") +
                         f" is more than the cluster's {cpus:g} CPU(s)"
                         + (f" / {gpus:g} GPU(s)" if need_gpu else "") + f"; at most {fits} at once")
    # a trial with workers only waits for them; Tune needs some resource to place its process
    per_trial = {"CPU": cfg.cpus_per_worker, "GPU": cfg.gpus_per_worker} if w == 0 else {"CPU": 0.01}
    return per_trial, concurrent


def scheduler(cfg: SweepConfig, state: dict, train: TrainConfig):
    from ray.tune.schedulers import ASHAScheduler, MedianStoppingRule

    from rayrec.train.trainer import plan_days

    windows = sum(1 for _, e in plan_days(os.path.abspath(cfg.data), train.train_days, train.window_days)
                  if e is not None)
    if train.eval_every == "epoch":   # evaluations planned: an epoch each, for the longest trial
        windows *= max([t.get("train.epochs", train.epochs) for t in state["trials"]] or [train.epochs])
    if cfg.scheduler == "asha":
        return ASHAScheduler(time_attr="evaluation", metric=cfg.metric, mode=cfg.mode,
                             # past the last window: a trial that reached it finishes its run, not cut at max_t
                             max_t=max(windows, cfg.grace) + 1, grace_period=cfg.grace, reduction_factor=2)
    if cfg.scheduler == "median":
        return MedianStoppingRule(time_attr="evaluation", metric=cfg.metric, mode=cfg.mode,
                                  grace_period=cfg.grace, min_samples_required=2)
    return None


def quiet(verbose: bool) -> None:
    """Ray Tune's status tables and INFO lines only with --verbose."""
    if verbose:
        return
    for name in ("ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Tune logs each trial's error as a traceback at ERROR; the progress line names it and
    # results.json and trials/ID/ keep it
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)


class Progress(TrialProgressCallback):
    """Tune callback: one line per trial event, with the best so far. Being a
    TrialProgressCallback, it takes the place of Tune's own, which prints every result."""

    def __init__(self, out: str, metric: str, mode: str, total: int):
        super().__init__(metric=metric)
        self.out, self.metric, self.sign, self.total = out, metric, 1 if mode == "max" else -1, total
        self.best: tuple[float, str] | None = None
        self.started = time.monotonic()
        self.seen: set[str] = set()

    def setup(self, **info):
        self.started = time.monotonic()   # also after a restore, which brings back the old clock
        self.seen = getattr(self, "seen", set())

    def say(self, text: str) -> None:
        sys.stdout.write(f"[tune {time.monotonic() - self.started:7.1f}s] {text}\n")
        sys.stdout.flush()

    def on_trial_start(self, iteration, trials, trial, **info):
        if trial.trial_id in self.seen:
            self.say(f"{short(trial.trial_id)} restarted: it goes on from its newest checkpoint")
            return
        self.seen.add(trial.trial_id)
        params = trial_params(trial.config)
        self.say(f"{short(trial.trial_id)} started ({len(self.seen)}/{self.total}): {describe(params)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        if value is None:
            return
        if self.best is None or self.sign * value > self.sign * self.best[0]:
            self.best = (value, trial.trial_id)
        where = f"day {result.get('train_day')}" + (f" epoch {result['epochs_done']}" if "epochs_done" in result else "")
        self.say(f"{short(trial.trial_id)} {where}: {self.metric} {value:.4f}"
                 f"   best so far {self.best[0]:.4f} ({short(self.best[1])})")

    def on_trial_complete(self, iteration, trials, trial, **info):
        here = trial_dir(self.out, trial.trial_id)
        if os.path.exists(os.path.join(here, REJECTED)):
            with open(os.path.join(here, REJECTED)) as f:
                self.say(f"{short(trial.trial_id)} rejected: {json.load(f)['reason']}")
        elif os.path.exists(RunDir(os.path.join(here, "run")).metrics_path):
            self.say(f"{short(trial.trial_id)} finished")
        else:
            self.say(f"{short(trial.trial_id)} stopped early")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.say(f"{short(trial.trial_id)} error: {first_line(trial)}")


def short(trial_id: str) -> str:
    return trial_id.rsplit("_", 1)[-1]


def first_line(trial) -> str:
    path = getattr(trial, "error_file", None) or ""
    try:
        with open(path) as f:
            lines = [ln for ln in f.read().strip().splitlines() if ln.strip()]
        return lines[-1][:300] if lines else "(no message)"
    except OSError:
        return "(no message)"

