"""Every stage as one typed function: rayrec's Python API, which the CLI and pipelines call.

    from rayrec import stages
    from rayrec.models.config import ModelConfig

    stages.synth(stages.SynthJob(out="raw"))
    stages.etl(stages.EtlJob(inputs=["raw/events.parquet"], out="data"))
    result = stages.train(stages.TrainJob(data="data", out="run", model=ModelConfig(arch="gpt2")))
    print(result.metrics["average"])
    stages.evaluate(stages.EvaluateJob(run="run", data="data"))

A job is a dataclass holding everything its stage reads (typed configs included), and the
stage returns a typed result. `Job.from_options(options, where)` builds a job from the
names the CLI's flags and a pipeline stage's YAML keys share (`max_len`, `config: FILE`
whose sections config_io reads...), so a flag, a YAML key and a Python field mean one
thing. The Triton export and the Serve deployment take their typed configs directly
(`export_triton(run, out, TritonExport)`, `deploy(run, ServeConfig)`).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from rayrec.config_io import checked, from_dict, read_section
from rayrec.etl.config import EtlConfig
from rayrec.models.config import ModelConfig
from rayrec.synth import SynthConfig
from rayrec.train.config import TrainConfig


def check_keys(cls, options: dict, where: str) -> None:
    """Every key of a stage's options is one its job reads, else an error naming it and `where`."""
    unknown = sorted(set(options) - set(cls.KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r} for stage {cls.VERB}; expected some of "
                         f"{sorted(cls.KEYS)}")


def _given(options: dict, names: tuple[str, ...]) -> dict:
    return {n: options.get(n) for n in names}


def override(cfg, where: str = "", **values):
    """`cfg` with the values given (not None) replaced, each checked against its field's
    type as a config file's are (a YAML `lr: 1e-3` is text to PyYAML)."""
    hints = typing.get_type_hints(type(cfg))
    return dataclasses.replace(cfg, **{k: checked(v, hints[k], f"{where}{k}") for k, v in values.items()
                                       if v is not None})


# --- synth --------------------------------------------------------------------------------
@dataclass
class SynthJob:
    out: str
    synth: SynthConfig = field(default_factory=SynthConfig)
    VERB: ClassVar[str] = "synth"
    KEYS: ClassVar[tuple] = ("out", "events", "days", "items", "seed", "format", "no_ceiling")

    @classmethod
    def from_options(cls, o: dict, where: str = "synth") -> "SynthJob":
        check_keys(cls, o, where)
        cfg = override(SynthConfig(), f"{where}: ", **_given(o, ("events", "days", "items", "seed", "format")))
        return cls(out=o.get("out"), synth=override(cfg, ceiling=False if o.get("no_ceiling") else None))

    @property
    def output(self) -> str:
        return self.out


def synth(job: SynthJob) -> dict:
    """Synthetic events (and their Bayes ceiling) in job.out; returns the report."""
    from rayrec.synth import write

    return write(job.synth, job.out)


# --- etl ----------------------------------------------------------------------------------
@dataclass
class EtlJob:
    inputs: list[str]
    out: str
    etl: EtlConfig = field(default_factory=EtlConfig)
    workflow: dict | None = None       # a `workflow:` section (ops), else the default workflow
    fitted: str | None = None          # apply this fitted workflow directory instead of fitting one
    overwrite: bool = False
    address: str | None = None         # a Ray cluster whose nodes run the Dask work
    where: str = "etl"                 # what errors in `workflow` name (its file)
    VERB: ClassVar[str] = "etl"
    KEYS: ClassVar[tuple] = ("input", "out", "config", "session_col", "item_col", "time_col", "max_len", "workflow",
                             "split", "seed", "scheduler", "device", "workers", "address", "overwrite")

    @classmethod
    def from_options(cls, o: dict, where: str = "etl") -> "EtlJob":
        check_keys(cls, o, where)
        path = o.get("config")
        cfg = from_dict(EtlConfig, read_section(path, "etl"), f"{path}: etl")
        cfg = override(cfg, f"{where}: ", **_given(o, ("session_col", "item_col", "time_col", "max_len", "scheduler",
                                                        "device", "workers", "split", "seed")))
        inputs = o.get("input") or []
        return cls(inputs=[inputs] if isinstance(inputs, str) else list(inputs), out=o.get("out"), etl=cfg,
                   workflow=read_section(path, "workflow") or None, fitted=o.get("workflow"),
                   overwrite=bool(o.get("overwrite")), address=o.get("address"), where=f"{path}: workflow")

    @property
    def output(self) -> str:
        return self.out


def etl(job: EtlJob, progress: Callable[[str], None] | None = None) -> dict:
    """Raw events -> sessions by day, schema and fitted workflow in job.out; returns the report."""
    from rayrec.etl import Workflow, default_workflow, run_etl, workflow_from_config

    if job.fitted:
        workflow = Workflow.load(job.fitted)
    else:
        workflow = workflow_from_config(job.workflow, job.where) if job.workflow else default_workflow(job.etl)
    return run_etl(job.inputs, job.out, job.etl, workflow, overwrite=job.overwrite, fitted=bool(job.fitted),
                   progress=progress or (lambda m: None), address=job.address)


# --- train --------------------------------------------------------------------------------
MODEL_FLAGS = ("arch", "masking", "d_model", "n_layer", "n_head", "max_len")
TRAIN_FLAGS = ("epochs", "batch_size", "lr", "workers", "train_days", "placement", "seed", "window_days",
               "checkpoint_every", "tensorboard", "mlflow")


@dataclass
class TrainJob:
    out: str
    data: str | None = None             # the ETL output (with `resume`: default the run's)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    resume: str | None = None           # continue this run from its checkpoint
    overwrite: bool = False
    address: str | None = None          # a Ray cluster to join
    VERB: ClassVar[str] = "train"
    KEYS: ClassVar[tuple] = ("data", "out", "config", *MODEL_FLAGS, *TRAIN_FLAGS, "address", "overwrite", "resume")

    @classmethod
    def from_options(cls, o: dict, where: str = "train") -> "TrainJob":
        """With `resume`, the run's own configs and data are the base, unless `config` or
        other keys say otherwise."""
        check_keys(cls, o, where)
        data, resume = o.get("data"), o.get("resume")
        if resume:
            from rayrec.train.trainer import resume_configs

            model, train, run_data = resume_configs(resume)
            if o.get("config"):
                model, train = config_sections(o.get("config"))
            data = data or run_data
        else:
            if not data:
                raise ValueError("--data is required (or --resume RUN)")
            model, train = config_sections(o.get("config"))
        flags = _given(o, TRAIN_FLAGS)
        flags["tensorboard"] = flags["tensorboard"] or None   # a switch: unset keeps the config's
        return cls(out=o.get("out"), data=data, model=override(model, f"{where}: model.", **_given(o, MODEL_FLAGS)),
                   train=override(train, f"{where}: train.", **flags), resume=resume,
                   overwrite=bool(o.get("overwrite")), address=o.get("address"))

    @property
    def output(self) -> str:
        return self.out


def config_sections(path: str | None) -> tuple[ModelConfig, TrainConfig]:
    """A config file's model: and train: sections (defaults without a file)."""
    return (from_dict(ModelConfig, read_section(path, "model"), f"{path}: model"),
            from_dict(TrainConfig, read_section(path, "train"), f"{path}: train"))


@dataclass
class TrainResult:
    run: str
    metrics: dict   # what RUN/metrics.json holds


def train(job: TrainJob, owns_process: bool = False) -> TrainResult:
    """Day-by-day training into the run directory job.out. `owns_process`: the calling
    process is rayrec's own (the CLI), whose malloc settings an in-process run may tune.
    Raises trainer.TrainingStopped when it stopped early (the run keeps its checkpoint)."""
    from rayrec.train.trainer import run_training

    metrics = run_training(job.data, job.out, job.model, job.train, address=job.address, overwrite=job.overwrite,
                           resume=job.resume, owns_process=owns_process)
    return TrainResult(job.out, metrics)


# --- tune ---------------------------------------------------------------------------------
@dataclass
class TuneJob:
    sweep: Any = None                   # tune.sweep.SweepConfig; None with `resume`
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    resume: str | None = None           # finish this interrupted sweep
    overwrite: bool = False
    VERB: ClassVar[str] = "tune"
    KEYS: ClassVar[tuple] = ("data", "out", "space", "config", "samples", "search", "scheduler", "metric", "mode",
                             "concurrent", "workers_per_trial", "cpus_per_worker", "gpus_per_worker", "grace",
                             "seed", "address", "resume", "overwrite", "verbose")

    @classmethod
    def from_options(cls, o: dict, where: str = "tune") -> "TuneJob":
        from rayrec.tune.sweep import SweepConfig

        check_keys(cls, o, where)
        resume = o.get("out") if o.get("resume") is True else o.get("resume")
        if resume:
            return cls(resume=resume)
        missing = [f for f in ("data", "out", "space") if not o.get(f)]
        if missing:
            raise ValueError("--" + ", --".join(missing) + " required (or --resume SWEEP)")
        settings = {k: v for k, v in o.items() if k not in ("config", "resume", "overwrite") and v is not None}
        model, train = config_sections(o.get("config"))
        return cls(sweep=SweepConfig(**settings), model=model, train=train, overwrite=bool(o.get("overwrite")))

    @property
    def output(self) -> str | None:
        return self.resume or (self.sweep.out if self.sweep else None)


def tune(job: TuneJob) -> None:
    """A sweep on Ray Tune into SWEEP/ (results.csv, results.json, best.yaml, trials/)."""
    from rayrec.tune.sweep import run_sweep

    if job.resume:
        run_sweep(None, None, None, resume=job.resume)
    else:
        run_sweep(job.sweep, job.model, job.train, overwrite=job.overwrite)


# --- evaluate -----------------------------------------------------------------------------
@dataclass
class EvaluateJob:
    run: str
    data: str
    days: str | None = None             # A:B or A; default the day after the last training day
    split: str = "test"
    threads: int | str = "auto"
    VERB: ClassVar[str] = "evaluate"
    KEYS: ClassVar[tuple] = ("run", "data", "days", "split", "threads", "json")

    @classmethod
    def from_options(cls, o: dict, where: str = "evaluate") -> "EvaluateJob":
        check_keys(cls, o, where)
        missing = [f for f in ("run", "data") if not o.get(f)]
        if missing:
            raise ValueError(f"{where}: " + ", ".join(missing) + " required")
        return cls(run=o["run"], data=o["data"], days=o.get("days"), split=o.get("split") or "test",
                   threads=o.get("threads") or "auto")

    @property
    def output(self) -> None:
        return None


def evaluate(job: EvaluateJob) -> dict:
    """Recall/NDCG of a saved run on job.split of each day, next to most-popular."""
    from rayrec.train.evaluate import evaluate_run

    return evaluate_run(job.run, job.data, job.days, job.split, job.threads)


# --- serving ------------------------------------------------------------------------------
def export_triton(run: str, out: str, options) -> str:
    """A Triton model repository of `run` (options: serve.triton_repo.TritonExport)."""
    from rayrec.serve.triton_repo import export_triton as export

    return export(run, out, options)


def deploy(run: str, cfg, address: str | None = None, blocking: bool = False) -> None:
    """The Ray Serve endpoint of `run` (cfg: serve.config.ServeConfig)."""
    from rayrec.serve.app import start

    start(run, cfg, address=address, blocking=blocking)


JOBS = {job.VERB: job for job in (SynthJob, EtlJob, TrainJob, TuneJob, EvaluateJob)}
RUN = {"synth": synth, "etl": etl, "train": train, "tune": tune, "evaluate": evaluate}


def report(verb: str, job, result) -> list[str]:
    """What a stage's result says to a person: the lines the CLI and a pipeline print."""
    if verb == "synth":
        c = result["ceiling"]
        lines = [f"wrote {result['events']:,} events in {result['sessions']:,} sessions to {result['path']}"]
        if c is not None:
            lines.append(f"Bayes-optimal ceiling (last item): recall@20 {c['recall@20']:.4f}  ndcg@20 "
                         f"{c['ndcg@20']:.4f}  -> {job.out}/ceiling.json")
        return lines
    if verb == "etl":
        days = result["sessions_by_day"]
        lines = [f"{result['events']:,} events -> {result['sessions']:,} sessions over {len(days)} days "
                 f"in {result['seconds']} s -> {job.out}"]
        if result["events_without_session"]:
            lines.append(f"dropped {result['events_without_session']:,} events without a session key "
                         "(see report.json)")
        return lines + [f"op {op} removed {n:,} rows" for op, n in result["rows_removed_by_op"].items()]
    if verb == "train":
        from rayrec.train.trainer import format_table

        return [format_table(result.metrics), f"run written to {job.out} (checkpoint/, metrics.json)"]
    if verb == "evaluate":
        from rayrec.train.evaluate import format_evaluation

        return [format_evaluation(result)]
    return []
