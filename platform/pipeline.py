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
flag that takes several values, true for a switch), so a stage means exactly what the
command line means and its flags' checks apply. A stage is done when its output is
complete (a published ETL output, a finished run, a sweep with its results); a train
stage whose run stopped early goes on from its last checkpoint, a sweep that was
interrupted with `rayrec tune --resume`. So a failed pipeline run again continues from the
stage that failed. Paths are relative to the current directory (a job's working_dir).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Callable

from rayrec.config_io import read_yaml
from rayrec.files import is_complete
from rayrec.storage import display, join, locate

STAGES = ("synth", "etl", "train", "tune", "evaluate")
OUTPUT_FLAG = {"synth": "out", "etl": "out", "train": "out", "tune": "out"}
TOP_KEYS = {"name", "stages"}


@dataclass
class Stage:
    verb: str
    options: dict

    def argv(self, parser: argparse.ArgumentParser, where: str) -> list[str]:
        """The stage as a rayrec command line, every key checked against the verb's flags."""
        flags = _flags(parser, self.verb)
        argv = [self.verb]
        for key, value in self.options.items():
            flag = "--" + str(key).replace("_", "-")
            if flag not in flags:
                raise ValueError(f"{where}: unknown key {key!r} for stage {self.verb}; expected some of "
                                 f"{sorted(f[2:] for f in flags)}")
            if value is True:
                argv.append(flag)
            elif value is False or value is None:
                continue
            elif isinstance(value, list):
                argv += [flag, *map(str, value)]
            else:
                argv += [flag, str(value)]
        return argv

    @property
    def output(self) -> str | None:
        key = OUTPUT_FLAG.get(self.verb)
        return str(self.options[key]) if key and key in self.options else None


@dataclass
class Pipeline:
    name: str
    stages: list[Stage]


def _flags(parser: argparse.ArgumentParser, verb: str) -> set[str]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[verb]
    return {s for a in sub._actions for s in a.option_strings if s.startswith("--") and s != "--help"}


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
        stages.append(Stage(verb, dict(options or {})))
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
        run = locate(out)
        return "done" if run.child("metrics.json").is_file() else \
            "stopped" if run.child("stopped.json").is_file() else "todo"
    return "done"


def run_pipeline(path: str, parser: argparse.ArgumentParser, run_verb: Callable[[list[str]], int],
                 say=print) -> int:
    """Run the stages in order through `run_verb` (the CLI); stop at the first that fails."""
    pipeline = load_pipeline(path)
    argvs = [s.argv(parser, f"{path}: stage {i} ({s.verb})") for i, s in enumerate(pipeline.stages, 1)]
    say(f"pipeline {pipeline.name}: {' -> '.join(s.verb for s in pipeline.stages)}")
    for i, (stage, argv) in enumerate(zip(pipeline.stages, argvs), 1):
        state = stage_state(stage)
        head = f"[{i}/{len(argvs)}] {stage.verb}"
        if state == "done":
            say(f"{head}: skipped, {display(stage.output)} is complete")
            continue
        if state == "stopped":
            argv = ["tune", "--resume", stage.output] if stage.verb == "tune" else _resume_argv(argv, stage.output)
            say(f"{head}: {display(stage.output)} stopped early; resuming it from its last checkpoint")
        elif stage.output is not None and locate(stage.output).exists():
            argv = argv + ["--overwrite"]   # an incomplete leftover of an interrupted run
        say(f"{head}: rayrec {' '.join(argv)}")
        started = time.perf_counter()
        code = run_verb(argv)
        if code:
            say(f"{head}: failed (exit {code}); fix it and run the pipeline again: finished stages are skipped")
            return code
        say(f"{head}: done in {time.perf_counter() - started:.1f} s")
    say(f"pipeline {pipeline.name}: all {len(argvs)} stages done")
    return 0


def _resume_argv(argv: list[str], out: str) -> list[str]:
    """`train ... --out RUN` -> continue RUN from its checkpoint into RUN."""
    return [*argv, "--resume", out, "--overwrite"]
