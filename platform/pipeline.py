"""Pipelines: rayrec stages run in order from one YAML file, each skipped when its
complete output already exists.

    name: rees46
    stages:
      - synth: {out: work/raw, events: 200000, format: csv}
      - etl:   {input: [work/raw/events.csv], out: work/data, config: examples/rees46/etl.yaml}
      - train: {data: work/data, out: work/run, config: examples/rees46/gpt2-clm.yaml}
      - tune:  {data: work/data, out: work/sweep, space: examples/rees46/space.yaml}
      - evaluate: {run: work/run, data: work/data}

A stage's keys are the flags of its `rayrec` verb (`max_len` or `max-len`; a list for a
flag that takes several values, true for a switch): each becomes the stage's typed job
(stages.py) as the command line's flags do, so a stage means exactly what the command
line means and the same checks apply. A stage is done when its output is
complete (a published ETL output, a finished run, a sweep with its results); a train
stage whose run stopped early goes on from its last checkpoint, a sweep that was
interrupted with `rayrec tune --resume`. So a failed pipeline run again continues from the
stage that failed. Paths are relative to the current directory (a job's working_dir).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from rayrec import stages as api
from rayrec.config_io import read_yaml
from rayrec.files import is_complete
from rayrec.rundir import RunDir
from rayrec.storage import display, join, locate

STAGES = tuple(api.JOBS)
OUTPUT_KEY = {"synth": "out", "etl": "out", "train": "out", "tune": "out"}
TOP_KEYS = {"name", "stages"}


@dataclass
class Stage:
    verb: str
    options: dict   # the stage's keys, `max-len` spelled `max_len`

    def job(self, where: str, **extra):
        """The stage's typed job (stages.py), its keys checked and its config files read."""
        return api.JOBS[self.verb].from_options({**self.options, **extra}, where)

    def check(self, where: str) -> None:
        api.check_keys(api.JOBS[self.verb], self.options, where)

    @property
    def output(self) -> str | None:
        key = OUTPUT_KEY.get(self.verb)
        return str(self.options[key]) if key and key in self.options else None


@dataclass
class Pipeline:
    name: str
    stages: list[Stage]


def load_pipeline(path: str) -> Pipeline:
    data = read_yaml(path)
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; a pipeline has {sorted(TOP_KEYS)}")
    raw = data.get("stages")
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{path}: 'stages' must be a non-empty list of {{stage: {{options}}}}")
    stages = []
    for i, item in enumerate(raw, 1):
        if not isinstance(item, dict) or len(item) != 1:
            raise ValueError(f"{path}: stage {i} must be one mapping {{stage: {{options}}}}, got {item!r}")
        (verb, options), = item.items()
        if verb not in STAGES:
            raise ValueError(f"{path}: stage {i}: unknown stage {verb!r}; expected one of {', '.join(STAGES)}")
        if options is not None and not isinstance(options, dict):
            raise ValueError(f"{path}: stage {i} ({verb}): options must be a mapping, got {options!r}")
        stages.append(Stage(verb, {str(k).replace("-", "_"): v for k, v in (options or {}).items()}))
    return Pipeline(str(data.get("name") or path), stages)


def stage_state(stage: Stage) -> str:
    """done (skip it), stopped (a train run to resume) or todo."""
    out = stage.output
    if out is None:
        return "todo"
    if stage.verb == "synth":
        return "done" if locate(join(out, "ceiling.json")).is_file() else "todo"
    if stage.verb == "tune":   # a sweep writes its results last; one begun but not finished is resumed
        sweep = locate(out)
        return "done" if sweep.child("results.json").is_file() else \
            "stopped" if sweep.child("sweep.json").is_file() else "todo"
    if not is_complete(out):
        return "todo"
    if stage.verb == "train":
        run = RunDir(out)
        return "done" if locate(run.metrics_path).is_file() else \
            "stopped" if locate(run.stopped_path).is_file() else "todo"
    return "done"


def run_stage(stage: Stage, where: str, extra: dict, say=print) -> None:
    """One stage: its typed job built (keys checked, config files read), its function
    (stages.py) run, and its report said."""
    job = stage.job(where, **extra)
    if stage.verb == "train":
        result = api.train(job, owns_process=True)   # a pipeline runs in rayrec's own process (`rayrec run`, a job)
    elif stage.verb == "etl":
        result = api.etl(job, progress=lambda m: say(f"  {m}"))
    else:
        result = api.RUN[stage.verb](job)
    for line in api.report(stage.verb, job, result):
        say(line)


def run_pipeline(path: str, say=print, run: Callable[..., None] = run_stage) -> int:
    """Run the stages in order; stop at the first that fails (non-zero, after saying why)."""
    pipeline = load_pipeline(path)
    where = [f"{path}: stage {i} ({s.verb})" for i, s in enumerate(pipeline.stages, 1)]
    for stage, w in zip(pipeline.stages, where):   # every key checked before anything runs
        stage.check(w)
    say(f"pipeline {pipeline.name}: {' -> '.join(s.verb for s in pipeline.stages)}")
    for i, (stage, w) in enumerate(zip(pipeline.stages, where), 1):
        state = stage_state(stage)
        head = f"[{i}/{len(pipeline.stages)}] {stage.verb}"
        extra: dict = {}
        if state == "done":
            say(f"{head}: skipped, {display(stage.output)} is complete")
            continue
        if state == "stopped":
            extra = {"resume": stage.output} if stage.verb == "tune" else {"resume": stage.output, "overwrite": True}
            say(f"{head}: {display(stage.output)} stopped early; resuming it from its last checkpoint")
        elif stage.output is not None and locate(stage.output).exists():
            extra = {"overwrite": True}   # an incomplete leftover of an interrupted run
        say(f"{head}: {stage.verb} " + " ".join(f"{k}={v}" for k, v in {**stage.options, **extra}.items()))
        started = time.perf_counter()
        try:
            run(stage, w, extra, say)
        except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as e:
            say(f"{head}: failed ({type(e).__name__}: {str(e).splitlines()[0][:300]}); fix it and run the pipeline "
                "again: finished stages are skipped")
            return 1
        say(f"{head}: done in {time.perf_counter() - started:.1f} s")
    say(f"pipeline {pipeline.name}: all {len(pipeline.stages)} stages done")
    return 0
