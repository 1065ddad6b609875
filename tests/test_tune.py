"""`rayrec tune` on a real local Ray cluster: sweeps with rejected, stopped, failed and
resumed trials, their outputs, and the checks made before any trial starts."""
import csv
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from rayrec.cli import main

RAYREC = os.path.join(os.path.dirname(sys.executable), "rayrec")
# fp32: the tests below compare runs bit for bit, and CPU bf16 matmuls (oneDNN) do not always
# repeat exactly while other processes (the concurrent trials) share the cores
BASE = {"model": {"d_model": 32, "n_head": 2, "n_layer": 1},
        "train": {"epochs": 2, "train_days": "1:3", "precision": "fp32"}}


def write(path, value):
    with open(path, "w") as f:
        if isinstance(value, str):
            f.write(value)
        else:
            yaml.safe_dump(value, f)
    return str(path)


def rows(sweep):
    with open(os.path.join(sweep, "results.csv")) as f:
        return list(csv.DictReader(f))


def test_a_sweep_over_architectures_and_maskings_writes_its_results_and_a_best_config_that_reproduces(
        etl_dir, tmp_path, capsys):
    space = write(tmp_path / "space.yaml", "model.arch: {grid: [gpt2, longformer]}\n"
                                           "model.masking: {grid: [clm, mlm]}\n"
                                           "train.lr: {loguniform: [1.0e-3, 1.0e-2]}\n")
    sweep = str(tmp_path / "sweep")
    assert main(["tune", "--data", etl_dir, "--out", sweep, "--space", space, "--samples", "1",
                 "--config", write(tmp_path / "base.yaml", BASE)]) == 0
    out = capsys.readouterr().out
    found = rows(sweep)
    assert len(found) == 4 and os.path.getsize(os.path.join(sweep, "sweep.png")) > 10_000
    by_status = {}
    for r in found:
        by_status.setdefault(r["status"], []).append(r)
    rejected = by_status["rejected"]
    assert len(rejected) == 1 and rejected[0]["model.arch"] == "longformer" and rejected[0]["model.masking"] == "clm"
    assert "cannot be made to attend causally" in rejected[0]["message"]
    assert len(by_status["finished"]) == 3
    for r in by_status["finished"]:
        assert len(r["reports_ndcg@20"].split(";")) == 3                     # one report per evaluated window
        assert os.path.exists(os.path.join(r["run_dir"], "checkpoint", "model.safetensors"))
    assert "rejected:" in out and "best so far" in out and "rank" in out
    pids = {json.load(open(os.path.join(os.path.dirname(r["run_dir"]), "times.json")))["pid"]
            for r in by_status["finished"]}
    assert len(pids) < 3                  # two at a time, in trial processes that Tune reuses
    assert "Configuration for experiment" not in out and "Trial status" not in out   # Ray's tables stay hidden
    results = json.load(open(os.path.join(sweep, "results.json")))
    best = results["trials"][0]
    assert best["status"] == "finished" and best["score"] == max(float(r["score_ndcg@20"]) for r in by_status["finished"])
    assert main(["train", "--data", etl_dir, "--config", os.path.join(sweep, "best.yaml"),
                 "--out", str(tmp_path / "again")]) == 0
    again = json.load(open(tmp_path / "again" / "metrics.json"))
    assert again["average"]["ndcg@20"] == pytest.approx(best["score"], abs=1e-9)


@pytest.mark.parametrize("every", ["window", "epoch"])
def test_asha_stops_a_clearly_bad_arm_early_and_keeps_its_checkpoint(etl_dir, tmp_path, every):
    """Day by day (an evaluation per window), or one window evaluated after each epoch."""
    space = write(tmp_path / "space.yaml", "train.lr: {grid: [0.01, 0.005, 1.0e-7]}\nmodel.arch: gru\n")
    base = BASE if every == "window" else \
        {"model": BASE["model"], "train": {"epochs": 3, "train_days": "1:3", "window_days": 3, "eval_every": "epoch"}}
    sweep = str(tmp_path / "sweep")
    assert main(["tune", "--data", etl_dir, "--out", sweep, "--space", space, "--scheduler", "asha",
                 "--concurrent", "1", "--config", write(tmp_path / "base.yaml", base)]) == 0
    found = {float(r["train.lr"]): r for r in rows(sweep)}
    bad = found[1e-7]
    assert bad["status"] == "stopped early" and len(bad["reports_ndcg@20"].split(";")) < 3
    assert found[0.01]["status"] == "finished"
    stopped = json.load(open(os.path.join(bad["run_dir"], "stopped.json")))   # resumable with train --resume
    assert stopped["config"]["train"]["lr"] == 1e-7
    assert not glob.glob(os.path.join(sweep, "trials", "*", ".run.tmp-*"))


def test_a_trial_that_raises_is_an_error_the_others_finish_and_a_seed_repeats_exactly(etl_dir, tmp_path):
    space = write(tmp_path / "space.yaml", "model.arch: gru\ntrain.eval_split: {grid: [valid, nosuch]}\n"
                                           "train.seed: {grid: [3, 3]}\n")
    sweep = str(tmp_path / "sweep")
    assert main(["tune", "--data", etl_dir, "--out", sweep, "--space", space,
                 "--config", write(tmp_path / "base.yaml", BASE)]) == 0
    found = rows(sweep)
    errors = [r for r in found if r["status"] == "error"]
    finished = [r for r in found if r["status"] == "finished"]
    assert len(errors) == 2 and all("nosuch.parquet: missing" in r["message"] for r in errors)
    assert len(finished) == 2 and finished[0]["reports_ndcg@20"] == finished[1]["reports_ndcg@20"]


def test_a_killed_driver_resumes_without_rerunning_finished_trials(etl_dir, tmp_path):
    space = write(tmp_path / "space.yaml", "model.arch: gru\ntrain.lr: {grid: [0.003, 0.01, 0.005, 0.02]}\n")
    base = write(tmp_path / "base.yaml", {"model": BASE["model"],
                                          "train": {"epochs": 4, "train_days": "1:3", "checkpoint_every": "epoch"}})
    sweep = str(tmp_path / "sweep")
    proc = subprocess.Popen([RAYREC, "tune", "--data", etl_dir, "--out", sweep, "--space", space, "--config", base,
                             "--concurrent", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        done = glob.glob(os.path.join(sweep, "trials", "*", "run", "metrics.json"))
        partial = glob.glob(os.path.join(sweep, "trials", "*", "checkpoints", "in-process", "ckpt-*", "progress.json"))
        if len(done) >= 2 and partial:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read()
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    finished = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(sweep, "trials", "*", "run", "metrics.json"))}
    assert len(finished) >= 2 and not os.path.exists(os.path.join(sweep, "results.csv"))
    assert main(["tune", "--resume", sweep]) == 0
    found = rows(sweep)
    assert len(found) == 4 and all(r["status"] == "finished" for r in found)
    for path, mtime in finished.items():
        assert os.path.getmtime(path) == mtime                      # not trained again


@pytest.mark.parametrize("space, expected", [
    ("model.arch: {grid: [gpt2]}\nmodel.d_modle: {choice: [32]}\n", "line 2: model.d_modle: 'd_modle' is not a field"),
    ("train.lr: {normal: [0, 1]}\n", "line 1: train.lr: unknown distribution 'normal'"),
    ("model.arch: {choice: []}\n", "line 1: model.arch: choice needs a non-empty list"),
    ("trainer.lr: {choice: [1]}\n", "line 1: trainer.lr: a space key is `model.NAME` or `train.NAME`"),
    ("model.dropout: {choice: [0.1, 1.5]}\n", "model.dropout is a probability and must lie in [0, 1), got 1.5"),
])
def test_a_bad_space_is_an_error_naming_the_key_and_line_before_any_trial(etl_dir, tmp_path, capsys, space,
                                                                           expected):
    path = write(tmp_path / "space.yaml", space)
    assert main(["tune", "--data", etl_dir, "--out", str(tmp_path / "s"), "--space", path]) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_a_metric_training_does_not_report_and_too_many_concurrent_trials_are_errors(etl_dir, tmp_path, capsys):
    path = write(tmp_path / "space.yaml", "model.arch: gru\n")
    assert main(["tune", "--data", etl_dir, "--out", str(tmp_path / "s"), "--space", path, "--metric", "auc"]) == 2
    assert "--metric 'auc' is not reported by training" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
    code = subprocess.run([RAYREC, "tune", "--data", etl_dir, "--out", str(tmp_path / "s"), "--space", path,
                           "--concurrent", "3", "--workers-per-trial", "2"], capture_output=True, text=True)
    assert code.returncode == 2, code.stdout + code.stderr
    assert "--concurrent 3 x 2 CPU(s) per trial (2 worker(s) x 1) is more than the cluster's" in code.stderr
    assert not glob.glob(str(tmp_path / "s" / "trials" / "*"))


def test_optuna_draws_the_trials_and_keeps_the_conditions(etl_dir, tmp_path):
    space = write(tmp_path / "space.yaml", "model.arch: {choice: [gpt2, llama]}\nmodel.d_model: {choice: [24, 32]}\n"
                                           "model.n_head: {choice: [2, 3, 4], divides: model.d_model}\n"
                                           "train.lr: {loguniform: [1.0e-3, 1.0e-2]}\n")
    sweep = str(tmp_path / "sweep")
    assert main(["tune", "--data", etl_dir, "--out", sweep, "--space", space, "--search", "optuna", "--samples", "3",
                 "--concurrent", "1", "--config", write(tmp_path / "base.yaml", BASE)]) == 0
    found = rows(sweep)
    assert len(found) == 3 and all(r["status"] == "finished" for r in found)
    for r in found:
        assert int(r["model.d_model"]) % int(r["model.n_head"]) == 0 and 1e-3 <= float(r["train.lr"]) <= 1e-2


def test_a_tune_stage_of_a_pipeline_is_done_with_results_and_resumed_when_begun(tmp_path):
    from rayrec.pipeline import Stage, stage_state

    stage = Stage("tune", {"out": str(tmp_path / "sweep"), "data": "d", "space": "s.yaml"})
    assert stage_state(stage) == "todo"
    os.makedirs(tmp_path / "sweep")
    write(tmp_path / "sweep" / "sweep.json", "{}")
    assert stage_state(stage) == "stopped"
    write(tmp_path / "sweep" / "results.json", "{}")
    assert stage_state(stage) == "done"


def process_writing(path_glob: str) -> int | None:
    """The pid of a process holding a file matching `path_glob` open (a trial's trial.log)."""
    import fnmatch

    for fd in glob.glob("/proc/[0-9]*/fd/*"):
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if fnmatch.fnmatch(target, path_glob):
            return int(fd.split("/")[2])
    return None


def test_a_trial_whose_process_is_killed_restarts_from_its_checkpoint_to_the_same_result(etl_dir, tmp_path, capsys):
    import threading

    space = write(tmp_path / "space.yaml", "model.arch: gru\ntrain.lr: {grid: [0.01]}\n")
    base = {"model": BASE["model"], "train": {"epochs": 10, "train_days": "1:3", "checkpoint_every": "epoch",
                                              "max_failures": 1, "precision": "fp32"}}
    killed = []

    def kill_mid_trial():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            if glob.glob(str(tmp_path / "sweep" / "trials" / "*" / "checkpoints" / "in-process" / "*-day-002-*")):
                pid = process_writing(str(tmp_path / "sweep" / "trials" / "*" / "trial.log"))
                if pid:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_mid_trial)
    watcher.start()
    try:
        assert main(["tune", "--data", etl_dir, "--out", str(tmp_path / "sweep"), "--space", space,
                     "--config", write(tmp_path / "base.yaml", base)]) == 0
    finally:
        killed.append(None)
        watcher.join()
    assert killed[0] is not None
    assert "restarted" in capsys.readouterr().out
    (row,) = rows(str(tmp_path / "sweep"))
    assert row["status"] == "finished"
    log = open(os.path.join(os.path.dirname(row["run_dir"]), "trial.log")).read()
    assert "restart 1 from the last checkpoint:" in log          # not from scratch
    assert main(["train", "--data", etl_dir, "--config", str(tmp_path / "sweep" / "best.yaml"),
                 "--out", str(tmp_path / "again")]) == 0                      # the same run, never killed
    again = json.load(open(tmp_path / "again" / "metrics.json"))
    assert float(row["score_ndcg@20"]) == pytest.approx(again["average"]["ndcg@20"], abs=1e-9)


def test_a_sweep_on_a_two_node_cluster_places_its_trials_on_both_nodes(etl_dir, tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()   # the local cluster the sweeps above started in this process
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "object_store_memory": 150 * 1024 * 1024, "node_ip_address": "127.0.0.1"})
    cluster.add_node(num_cpus=1, object_store_memory=150 * 1024 * 1024, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    try:
        space = write(tmp_path / "space.yaml", "model.arch: gru\ntrain.lr: {grid: [0.01, 0.005]}\n")
        sweep = str(tmp_path / "sweep")
        assert main(["tune", "--data", etl_dir, "--out", sweep, "--space", space, "--address", cluster.address,
                     "--config", write(tmp_path / "base.yaml", BASE)]) == 0
        found = rows(sweep)
        assert [r["status"] for r in found] == ["finished", "finished"]
        nodes = {json.load(open(os.path.join(os.path.dirname(r["run_dir"]), "times.json")))["node"] for r in found}
        assert len(nodes) == 2                # the trials filled both nodes
    finally:
        ray.shutdown()
        cluster.shutdown()
