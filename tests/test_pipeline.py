"""Pipelines: stages in order, a failed one stops the run, running again skips what is
complete; bad pipeline files name the stage or key."""
import os

import pytest
import yaml

from rayrec.cli import main
from rayrec.pipeline import load_pipeline, run_pipeline, run_stage

MODEL = {"arch": "gpt2", "d_model": 32, "n_head": 2, "n_layer": 1, "workers": 0, "epochs": 1, "train_days": "1:2"}


def write(path, stages, **top):
    path.write_text(yaml.safe_dump({"name": "t", **top, "stages": stages}))
    return str(path)


def test_a_failed_stage_stops_the_pipeline_and_a_rerun_resumes_there(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stages = [{"synth": {"out": "raw", "events": 20000, "days": 3, "items": 200}},
              {"etl": {"input": ["raw/events.parquet"], "out": "data"}},
              {"train": {"data": "data", "out": "run", **MODEL, "lr": -1.0}},   # AdamW refuses lr < 0
              {"evaluate": {"run": "run", "data": "data", "days": "3"}}]
    path = write(tmp_path / "p.yaml", stages)
    said: list[str] = []
    calls: list[list[str]] = []

    def run_verb(stage, *args):   # the stage's function on its typed job (stages.py)
        calls.append([stage.verb])
        run_stage(stage, *args)

    assert run_pipeline(path, say=said.append, run=run_verb) != 0
    assert [c[0] for c in calls] == ["synth", "etl", "train"]
    assert os.path.isdir("data") and not os.path.exists("run")
    assert any("failed" in line for line in said)
    stages[2]["train"]["lr"] = 0.005
    write(tmp_path / "p.yaml", stages)
    calls.clear()
    assert run_pipeline(path, say=said.append, run=run_verb) == 0
    assert [c[0] for c in calls] == ["train", "evaluate"]        # synth and etl were complete: skipped
    assert os.path.exists("run/metrics.json")
    calls.clear()
    assert main(["run", path]) == 0                               # everything done: only evaluate runs
    assert os.path.exists("run/metrics.json")


@pytest.mark.parametrize("stages, message", [
    ([{"deploy": {}}], "unknown stage 'deploy'"),
    ([{"etl": {"input": ["x"], "out": "y", "max_lenn": 3}}], "unknown key 'max_lenn' for stage etl"),
    ([{"etl": {}, "train": {}}], "stage 1 must be one mapping"),
])
def test_bad_pipelines_name_the_stage_or_key(tmp_path, stages, message):
    path = write(tmp_path / "p.yaml", stages)
    with pytest.raises(ValueError, match=message):
        run_pipeline(path, run=lambda *args: None)
    assert main(["run", path]) == 2


def test_unknown_top_level_keys_are_named(tmp_path):
    path = write(tmp_path / "p.yaml", [{"etl": {}}], stagse=[])
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['stagse'\]"):
        load_pipeline(path)


def test_the_example_pipeline_is_valid():
    path = os.path.join(os.path.dirname(__file__), "..", "examples", "pipeline.yaml")
    pipeline = load_pipeline(path)
    assert [s.verb for s in pipeline.stages] == ["synth", "etl", "train", "evaluate"]
    for i, s in enumerate(pipeline.stages, 1):
        s.check(f"stage {i}")
