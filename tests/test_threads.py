"""Defaults that use the machine: `auto` threads for training, evaluation and serving, and
each command says how many it used."""
import os

import pytest
import torch

from rayrec.serve.config import ServeConfig
from rayrec.threads import check_threads, threads_for, usable_cores
from rayrec.train.config import TrainConfig


def test_auto_is_the_usable_cores_split_between_the_processes_sharing_them():
    cores = usable_cores()
    assert 1 <= cores <= len(os.sched_getaffinity(0))
    assert threads_for("auto") == cores
    assert threads_for("auto", sharing=2) == max(1, cores // 2)
    assert threads_for("auto", sharing=10 * cores) == 1
    assert threads_for(3) == 3
    assert TrainConfig().threads_per_worker == "auto" and ServeConfig().threads == "auto"
    assert ServeConfig(num_replicas=2).replica_threads() == max(1, cores // 2)
    assert ServeConfig(num_cpus=3).replica_threads() == 3
    assert ServeConfig(threads=4).replica_threads() == 4


@pytest.mark.parametrize("value", [0, -1, "many", 1.5, True])
def test_a_bad_thread_count_names_its_field(value):
    with pytest.raises(ValueError, match="train.threads_per_worker must be 'auto' or an integer"):
        TrainConfig(threads_per_worker=value)
    with pytest.raises(ValueError, match="serve.threads must be 'auto' or an integer"):
        ServeConfig(threads=value)
    with pytest.raises(ValueError):
        check_threads(value, "x")


def test_in_process_training_uses_every_core_by_default_and_says_so(etl_dir, tmp_path, capsys):
    from rayrec.cli import main

    before = torch.get_num_threads()
    assert main(["train", "--data", etl_dir, "--out", str(tmp_path / "run"), "--workers", "0", "--epochs", "1",
                 "--train-days", "1:1", "--d-model", "16", "--n-layer", "1", "--n-head", "2", "--max-len", "8"]) == 0
    out = capsys.readouterr().out
    want = usable_cores()
    assert f"[rayrec] training in-process on {want} torch thread(s) (train.threads_per_worker: auto)" in out
    if len(os.sched_getaffinity(0)) >= 2:
        assert want >= 2            # this 2-core machine trains on 2 threads, not 1
    assert torch.get_num_threads() == before      # the caller's setting comes back

    assert main(["evaluate", "--run", str(tmp_path / "run"), "--data", etl_dir, "--days", "2",
                 "--threads", "1"]) == 0
    assert "(scored on 1 torch thread(s))" in capsys.readouterr().out


def test_omp_wait_is_typed_and_becomes_the_variables_libgomp_reads():
    from rayrec.threads import WAIT_AUTO_SPIN, wait_env, wait_in_effect

    assert TrainConfig().omp_wait == "auto" and ServeConfig().omp_wait == "auto"
    assert wait_env("auto") == {"GOMP_SPINCOUNT": str(WAIT_AUTO_SPIN)}
    assert wait_env(300000) == {"GOMP_SPINCOUNT": "300000"}           # libgomp's own, as before issue 34
    assert wait_env("passive") == {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "0"}
    assert wait_in_effect(wait_env("passive")) == "sleep" and wait_in_effect({}) == "spin 300000"
    assert wait_in_effect(wait_env(50)) == "spin 50"
    # a Serve replica gets it in its own runtime_env, as Ray Serve's declarative config says too
    options = ServeConfig(omp_wait=7).deployment_options()
    assert options["ray_actor_options"]["runtime_env"] == {"env_vars": {"GOMP_SPINCOUNT": "7"}}


@pytest.mark.parametrize("value", [-1, "fast", 1.5, True, None])
def test_a_bad_omp_wait_names_its_field(value):
    with pytest.raises(ValueError, match="train.omp_wait must be auto, passive or a spin count"):
        TrainConfig(omp_wait=value)
    with pytest.raises(ValueError, match="serve.omp_wait must be auto, passive or a spin count"):
        ServeConfig(omp_wait=value)
