"""Training options: schedules, accumulation, clipping, precision (in-process, no Ray workers)."""
import math

import pytest
import torch

from rayrec.models.config import ModelConfig
from rayrec.train.config import TrainConfig
from rayrec.train.optim import lr_factor
from rayrec.train.trainer import run_training

MODEL = ModelConfig(arch="gpt2", masking="clm", d_model=32, n_head=2, n_layer=1)


def test_schedules():
    t = TrainConfig(epochs=2, warmup=0.1)
    f = [lr_factor(s, 100, 50, t) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0) and f[10] == pytest.approx(1.0)
    assert f[-1] < 0.02 and all(a >= b for a, b in zip(f[10:], f[11:]))  # linear decay
    c = TrainConfig(epochs=2, schedule="cosine")
    g = [lr_factor(s, 100, 50, c) for s in range(101)]
    assert g[0] == 1.0 and g[50] == pytest.approx(0.5) and g[100] == pytest.approx(0.0, abs=1e-12)
    r = TrainConfig(epochs=2, schedule="cosine", cosine_cycles_per_epoch=1)
    h = [lr_factor(s, 100, 50, r) for s in range(101)]
    assert h[25] == pytest.approx(0.0, abs=1e-12) and h[50] == pytest.approx(1.0)  # a full cycle each epoch
    k = TrainConfig(schedule="constant", warmup=0.5)
    assert [lr_factor(s, 10, 10, k) for s in (0, 4, 5, 9)] == [0.2, 1.0, 1.0, 1.0]


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="train.schedule"):
        TrainConfig(schedule="step")
    with pytest.raises(ValueError, match="fp16 needs use_gpu"):
        TrainConfig(precision="fp16")


@pytest.mark.parametrize("options", [dict(precision="bf16"), dict(grad_accum=3, grad_clip=0.5),
                                     dict(schedule="cosine", warmup=0.2, cosine_cycles_per_epoch=1)])
def test_training_options_train(etl_dir, tmp_path, options):
    tcfg = TrainConfig(workers=0, epochs=2, batch_size=64, train_days="1:1", seed=1, **options)
    day = run_training(etl_dir, str(tmp_path / "run"), MODEL, tcfg)["days"][0]
    assert day["train_loss"] < day["first_loss"] and math.isfinite(day["recall@20"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine: NCCL, device "
                    "placement and fp16 with a gradient scaler are exercised only where one is present")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_gpu_training(etl_dir, tmp_path, precision):
    tcfg = TrainConfig(workers=1, use_gpu=True, precision=precision, epochs=2, train_days="1:1")
    day = run_training(etl_dir, str(tmp_path / "run"), MODEL, tcfg)["days"][0]
    assert day["train_loss"] < day["first_loss"]


def test_windows_of_several_days(etl_dir, tmp_path):
    tcfg = TrainConfig(workers=0, epochs=1, batch_size=64, train_days="1:3", window_days=2, seed=1)
    days = run_training(etl_dir, str(tmp_path / "run"), MODEL, tcfg)["days"]
    assert [(d["window"], d["eval_day"]) for d in days] == [([1, 2], 3), ([3], 4)]
    one = run_training(etl_dir, str(tmp_path / "one"), MODEL, TrainConfig(workers=0, epochs=1, batch_size=64,
                                                                            train_days="1:1", seed=1))
    assert days[0]["train_sequences"] > one["days"][0]["train_sequences"]  # both days' sessions


def test_workers_read_disjoint_equal_shards(tmp_path):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rayrec.train.data import read_shard

    path = str(tmp_path / "t.parquet")
    pq.write_table(pa.table({"x": np.arange(103)}), path, row_group_size=10)  # 11 row groups
    for world in (1, 2, 3, 4):
        train = [read_shard(path, ["x"], r, world).column("x").to_pylist() for r in range(world)]
        assert len({len(t) for t in train}) == 1 and sum(map(len, train)) > 103 - world
        flat = [v for t in train for v in t]
        assert len(flat) == len(set(flat))  # disjoint
        evals = [read_shard(path, ["x"], r, world, cover_all=True).column("x").to_pylist() for r in range(world)]
        assert sorted(v for t in evals for v in t) == list(range(103))  # every row evaluated once



def test_every_train_option_is_documented():
    import dataclasses
    import os

    doc = open(os.path.join(os.path.dirname(__file__), "..", "docs", "train-config.md")).read()
    assert not [f.name for f in dataclasses.fields(TrainConfig) if f"`{f.name}`" not in doc]
