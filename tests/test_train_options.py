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


def test_precision_auto_is_bf16_only_where_the_cpu_multiplies_bf16():
    from rayrec.train.optim import cpu_has_amx_bf16, precision

    with open("/proc/cpuinfo") as f:
        amx = "amx_bf16" in f.read().split()
    cpu = torch.device("cpu")
    assert cpu_has_amx_bf16() == amx
    assert TrainConfig().precision == "auto"
    assert precision(TrainConfig(workers=0), cpu) == ("bf16" if amx else "fp32")
    assert precision(TrainConfig(workers=2), cpu, worker_group=True) == "fp32"   # a Ray Train worker (session.py)
    assert precision(TrainConfig(precision="fp32"), cpu) == "fp32"
    assert precision(TrainConfig(precision="bf16"), cpu) == "bf16"


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


# --- each option does what it says: the gradients the optimizer applies, seen by torch's
# optimizer step hook, in the loop rayrec trains with (train_one_day) ----------------------
def applied_gradients(tcfg, data, dtype=torch.float64, arch="gpt2", seed=0):
    """The gradients at every optimizer step of one window, and the loop's result."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    import model_data as md
    from rayrec.train.loop import train_one_day

    torch.manual_seed(seed)
    m = md.model(arch=arch).to(dtype)
    seen = []
    hook = register_optimizer_step_pre_hook(lambda opt, args, kwargs: seen.append(
        [p.grad.detach().clone() for g in opt.param_groups for p in g["params"] if p.grad is not None]))
    try:
        out = train_one_day(m, tcfg, data, 0, 1, 1)
    finally:
        hook.remove()
    return seen, out


def full_sessions(n, seed=4):
    """Sessions of equal length, so every micro-batch holds as many targets as any other."""
    import model_data as md

    return md.sessions(n, seed=seed, min_len=md.MAX_LEN, max_len=md.MAX_LEN)


def norm(grads):
    return float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))


def test_grad_accum_3_applies_the_gradient_of_a_batch_three_times_larger():
    data = full_sessions(24)
    accum, _ = applied_gradients(TrainConfig(workers=0, epochs=1, batch_size=8, grad_accum=3), data)
    big, _ = applied_gradients(TrainConfig(workers=0, epochs=1, batch_size=24, grad_accum=1), data)
    assert len(accum) == len(big) == 1                       # one optimizer step over the three micro-batches
    assert len(accum[0]) == len(big[0])
    for a, b in zip(accum[0], big[0]):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-14)  # float64: the same update


def test_grad_clip_bounds_the_norm_that_is_applied():
    data = full_sessions(16)
    free, _ = applied_gradients(TrainConfig(workers=0, epochs=1, batch_size=16), data)
    limit = norm(free[0]) / 4
    clipped, _ = applied_gradients(TrainConfig(workers=0, epochs=1, batch_size=16, grad_clip=limit), data)
    assert norm(clipped[0]) == pytest.approx(limit, rel=1e-6)
    for c, f in zip(clipped[0], free[0]):                    # the same direction, scaled down
        assert torch.allclose(c, f * (limit / norm(free[0])), rtol=1e-6, atol=1e-15)
    loose, _ = applied_gradients(TrainConfig(workers=0, epochs=1, batch_size=16, grad_clip=norm(free[0]) * 2), data)
    assert all(torch.equal(a, b) for a, b in zip(loose[0], free[0]))   # below the limit: untouched


def test_bf16_stays_within_two_percent_of_fp32():
    """bf16 autocast keeps 8 bits of mantissa: the losses of a window stay within 2% of fp32's."""
    import model_data as md

    data = md.sessions(256, seed=5)
    tcfg = TrainConfig(workers=0, epochs=2, batch_size=32, lr=5e-3, precision="fp32")
    _, fp32 = applied_gradients(tcfg, data, dtype=torch.float32)
    _, bf16 = applied_gradients(TrainConfig(**{**tcfg.__dict__, "precision": "bf16"}), data, dtype=torch.float32)
    assert bf16["first_loss"] == pytest.approx(fp32["first_loss"], rel=0.02)
    assert bf16["train_loss"] == pytest.approx(fp32["train_loss"], rel=0.02)
    assert bf16["train_loss"] != fp32["train_loss"]          # autocast did run


def test_train_seed_varies_the_body_and_repeats_exactly(etl_dir, tmp_path):
    import model_data as md

    def body_weights(seed):
        torch.manual_seed(seed)
        m = md.build_model(md.schema(), ModelConfig(arch="gpt2", d_model=32, n_head=2, n_layer=1, max_len=md.MAX_LEN))
        return {k: v for k, v in m.state_dict().items() if k.startswith("body.")}

    one, again, other = body_weights(1), body_weights(1), body_weights(2)
    assert all(torch.equal(one[k], again[k]) for k in one)
    assert any(not torch.equal(one[k], other[k]) for k in one if one[k].is_floating_point())
    runs = [run_training(etl_dir, str(tmp_path / f"r{i}"), MODEL,
                         TrainConfig(workers=0, epochs=1, batch_size=64, train_days="1:1", seed=s))
            for i, s in enumerate((3, 3, 4))]
    assert runs[0]["days"][0]["train_loss"] == runs[1]["days"][0]["train_loss"]
    assert runs[0]["days"][0]["ndcg@20"] == runs[1]["days"][0]["ndcg@20"]
    assert runs[0]["days"][0]["train_loss"] != runs[2]["days"][0]["train_loss"]


def test_the_run_spec_crosses_to_workers_as_json_and_comes_back_equal(etl_dir):
    import json

    from rayrec.models.features import resolve_features
    from rayrec.schema import Schema
    from rayrec.train.spec import RunSpec

    cfg = MODEL
    spec = RunSpec(cfg, TrainConfig(workers=2, checkpoint_every=5, train_days="1:2"), etl_dir, "product_id-list",
                   resolve_features(Schema.load(etl_dir), cfg), [([1], 2), ([2], None)], "/tmp/scratch")
    text = spec.to_json()
    assert json.loads(text)["train"]["checkpoint_every"] == 5     # plain JSON: no live object rides along
    assert RunSpec.from_json(text) == spec
