"""Ray Train for real: DDP across two nodes, a worker SIGKILLed mid-epoch, and resume."""
import dataclasses
import glob
import json
import os
import threading
import time

import psutil
import pytest
import torch

from rayrec.models.checkpoint import load_model
from rayrec.models.config import ModelConfig
from rayrec.threads import threads_for
from rayrec.train.config import TrainConfig
from rayrec.train.trainer import run_training

MODEL = ModelConfig(arch="gpt2", masking="clm", d_model=32, n_head=2, n_layer=1)


@pytest.fixture
def two_node_cluster():
    """Two Ray nodes of one CPU each on this machine (loopback only)."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "object_store_memory": 150 * 1024 * 1024, "include_dashboard": True,
        "dashboard_host": "127.0.0.1", "node_ip_address": "127.0.0.1"})
    cluster.add_node(num_cpus=1, object_store_memory=150 * 1024 * 1024, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_ddp_across_two_nodes_keeps_replicas_identical(etl_dir, tmp_path, two_node_cluster):
    tcfg = TrainConfig(workers=2, placement="spread", epochs=2, batch_size=64, train_days="1:2", seed=3,
                       omp_wait=3000)
    metrics = run_training(etl_dir, str(tmp_path / "run"), MODEL, tcfg, address=two_node_cluster.address)
    for day in metrics["days"]:
        assert day["nodes"] == 2                   # one worker on each node
        assert day["replicas_in_sync"] == 1        # bit-identical parameters on both ranks
        assert day["train_loss"] < day["first_loss"]
    # the accel path each worker ran, as metrics.json records it, is what the config asked for
    from rayrec.accel import kernels

    with open(tmp_path / "run" / "metrics.json") as f:
        ran = json.load(f)["accel"]
    assert [w["rank"] for w in ran] == [0, 1] and len({w["node"] for w in ran}) == 2
    for w in ran:
        assert w["path"] == "fast" and w["unpad"] is True and w["attention"] == "rayrec_sdpa"
        assert "GPT2Model -> FastGPT2Model" in w["replaced"] and "Dropout -> FastDropout" in w["replaced"]
        assert w["kernels"] == kernels.status()     # built here by `make install`, or the reason it was not
        # read back inside each worker: train.omp_wait was in its environment before torch loaded
        # (Ray Train's worker_runtime_env), and auto threads are its host's cores split between the
        # workers there (both nodes of this cluster are on 127.0.0.1, so Ray Train counts 2 local workers)
        assert w["omp_wait"] == "spin 3000" and w["threads"] == threads_for("auto", sharing=2), w
    model = load_model(str(tmp_path / "run" / "checkpoint"))  # the checkpoint serves inference
    scores = model.next_item_scores(torch.tensor([[5, 6, 7]]))
    assert scores.shape == (1, model.n_items) and torch.isfinite(scores[0, model.first_item:]).all()


def kill_a_worker_mid_epoch(storage: str, killed: list, finished: threading.Event) -> None:
    """Once a checkpoint is registered and training goes on, SIGKILL one worker."""
    # a checkpoint Ray has persisted (not just the files the worker wrote)
    pattern = os.path.join(storage, "rayrec-*", "checkpoint_*", "progress.json")
    while not finished.is_set() and not glob.glob(pattern):
        time.sleep(0.02)
    time.sleep(1.0)  # the controller collects reports every 0.25 s (rayrec sets it): let it register this one
    for p in psutil.process_iter(["cmdline"]):
        if not finished.is_set() and "RayTrainWorker" in " ".join(p.info["cmdline"] or []):
            p.kill()
            killed.append(p.pid)
            return


@pytest.mark.parametrize("every", ["window", "5"])
def test_a_killed_worker_is_replaced_and_the_run_finishes(etl_dir, tmp_path, every):
    """With checkpoint_every=5 (steps) the restart resumes inside the window (optimizer and
    schedule restored) and ends exactly where the uninterrupted run ends."""
    import ray

    from rayrec.raylocal import init_ray

    init_ray(num_cpus=2, object_store_memory=200 * 1024 * 1024)
    try:
        tcfg = TrainConfig(workers=2, epochs=8 if every == "window" else 3, batch_size=32, train_days="1:3",
                           seed=5, max_failures=2, checkpoint_every=every, checkpoint_metric="recall@20")
        clean = run_training(etl_dir, str(tmp_path / "clean"), MODEL, tcfg)
        killed: list = []
        finished = threading.Event()
        store = tmp_path / "store"  # checkpoints on "shared storage" (a URI), not inside the run directory
        killer = threading.Thread(target=kill_a_worker_mid_epoch, args=(str(store), killed, finished))
        killer.start()
        try:
            hit = run_training(etl_dir, str(tmp_path / "killed"), MODEL,
                               dataclasses.replace(tcfg, storage=f"file://{store}"))
        finally:
            finished.set()
            killer.join()
    finally:
        ray.shutdown()
    assert killed, "no worker was found to kill"
    kept = glob.glob(str(store / "rayrec-*" / "checkpoint_*" / "model.safetensors"))
    # in the configured storage: the best keep_checkpoints by recall@20, the newest, and at most one
    # that the killed attempt persisted but Ray never registered (so never deletes)
    assert 1 <= len(kept) <= tcfg.keep_checkpoints + 2, kept
    assert [d["train_day"] for d in hit["days"]] == [1, 2, 3]
    # restarted once, from a checkpoint: a restart from scratch would leave every attempt at 0
    attempts = [d["attempt"] for d in hit["days"]]
    assert attempts[-1] == 1 and attempts == sorted(attempts), attempts
    # the restarted group redid day 2 from day 1's checkpoint with the same seeds
    for a, b in zip(clean["days"], hit["days"]):
        assert abs(a["recall@20"] - b["recall@20"]) < 0.02, (a, b)
        if every != "window":
            assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6)


def fp32_config(tmp_path) -> str:
    """Exact comparisons train in fp32: CPU bf16 matmuls (oneDNN) do not always repeat bit
    for bit while other processes share the cores (docs/train-config.md, `seed`)."""
    path = tmp_path / "fp32.yaml"
    path.write_text("train: {precision: fp32}\n")
    return str(path)


def test_resume_continues_a_stopped_run_to_the_same_result(etl_dir, tmp_path):
    from rayrec.cli import main

    common = ["--data", etl_dir, "--workers", "0", "--epochs", "2", "--seed", "7", "--arch", "gpt2",
              "--d-model", "32", "--n-head", "2", "--n-layer", "1", "--config", fp32_config(tmp_path)]
    assert main(["train", *common, "--out", str(tmp_path / "whole"), "--train-days", "1:3"]) == 0
    assert main(["train", *common, "--out", str(tmp_path / "part"), "--train-days", "1:1"]) == 0
    assert main(["train", "--resume", str(tmp_path / "part"), "--out", str(tmp_path / "resumed"),
                 "--train-days", "1:3"]) == 0
    whole = json.load(open(tmp_path / "whole" / "metrics.json"))
    resumed = json.load(open(tmp_path / "resumed" / "metrics.json"))
    assert [d["train_day"] for d in resumed["days"]] == [1, 2, 3]
    for key in ("recall@20", "ndcg@20", "mrr@20"):
        assert resumed["average"][key] == pytest.approx(whole["average"][key], abs=1e-9), key
    assert main(["train", "--resume", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2


def interrupt_when(pattern: str, finished: threading.Event, fired: list) -> None:
    """SIGINT this process (as Ctrl-C would) once a file matching `pattern` exists."""
    import signal

    while not finished.is_set():
        if glob.glob(pattern):
            fired.append(pattern)
            os.kill(os.getpid(), signal.SIGINT)
            return
        time.sleep(0.005)


@pytest.mark.parametrize("every", ["epoch", "4"])
def test_an_interrupted_run_resumes_inside_its_window_to_the_same_result(etl_dir, tmp_path, every):
    """Ctrl-C inside day 2 leaves RUN with the last checkpoint (optimizer, schedule,
    position) and stopped.json; --resume goes on from that batch and ends exactly where
    a run that never stopped ends."""
    from rayrec.cli import main

    common = ["--data", etl_dir, "--workers", "0", "--epochs", "3", "--seed", "11", "--arch", "gpt2",
              "--d-model", "32", "--n-head", "2", "--n-layer", "1", "--train-days", "1:3",
              "--checkpoint-every", every, "--config", fp32_config(tmp_path)]
    assert main(["train", *common, "--out", str(tmp_path / "whole")]) == 0
    finished, fired = threading.Event(), []
    pattern = str(tmp_path / ".part.tmp-*" / "scratch" / "*-day-002-epoch-*" / "progress.json")
    watcher = threading.Thread(target=interrupt_when, args=(pattern, finished, fired))
    watcher.start()
    try:
        code = main(["train", *common, "--out", str(tmp_path / "part")])
    finally:
        finished.set()
        watcher.join()
    assert fired and code == 1
    stopped = json.load(open(tmp_path / "part" / "stopped.json"))
    assert stopped["reason"] == "interrupted" and stopped["checkpoint"].startswith("day 2, epoch ")
    assert not (tmp_path / "part" / "metrics.json").exists()       # nothing that looks finished
    assert main(["train", "--resume", str(tmp_path / "part"), "--out", str(tmp_path / "resumed")]) == 0
    whole = json.load(open(tmp_path / "whole" / "metrics.json"))
    resumed = json.load(open(tmp_path / "resumed" / "metrics.json"))
    assert [d["train_day"] for d in resumed["days"]] == [1, 2, 3]
    for a, b in zip(whole["days"], resumed["days"]):
        for key in ("train_loss", "recall@20", "ndcg@20", "global_step"):
            assert b[key] == pytest.approx(a[key], abs=1e-9), key
