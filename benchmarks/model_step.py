"""Training-step throughput of the reference model configs, against the step's floor.

Configs (the issue's reference): XLNet, masked LM, 2 layers, 4 heads, max length 20,
batch 256, 20,000 items, item + category + price features (concat, price projected),
at d_model 64 ("small") and 192 ("large", the tutorial's). For each: steps/s of
forward + backward + AdamW step on --threads threads, and the floor

    floor = step FLOPs / measured matmul rate  +  logits bytes / measured bandwidth

FLOPs are counted by torch's FlopCounterMode on a real step (forward and backward). The
logits term charges 8 passes over the [masked positions x catalogue] fp32 logits (the
matmul writes them; log-softmax reads and writes; its backward reads two and writes one;
the two backward matmuls read the gradient). The matmul rate is a 2048^3 fp32 product,
the bandwidth a 256 MiB copy, both measured here first. A profile says where the time goes.
With --t4r, Transformers4Rec 23.12 trains the same config on the same sessions
(../shared/peers/t4r/bench.py, its own venv; its figure includes its data loader).

    python benchmarks/model_step.py --steps 30 --t4r
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from peers import run_t4r

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ITEMS, CATS, MAX_LEN, BATCH = 20_000, 200, 20, 256
CONFIGS = {"small": 64, "large": 192}


def machine_rates(threads: int, dtype: torch.dtype = torch.float32) -> tuple[float, float]:
    """(matmul FLOP/s in `dtype`, memory bytes/s) of this machine on `threads` threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    for _ in range(2):
        a @ b
    t = time.perf_counter()
    for _ in range(5):
        a @ b
    flops = 5 * 2 * 2048 ** 3 / (time.perf_counter() - t)
    src, dst = torch.ones(64 << 20), torch.empty(64 << 20)
    dst.copy_(src)
    t = time.perf_counter()
    for _ in range(5):
        dst.copy_(src)
    bandwidth = 5 * 2 * src.numel() * 4 / (time.perf_counter() - t)
    return flops, bandwidth


def sessions(n: int, seed: int) -> dict[str, np.ndarray]:
    """Ragged sessions of 2..20 events with Zipf-popular items; category and price follow the item."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, MAX_LEN + 1, size=n)
    items = np.minimum(rng.zipf(1.15, size=(n, MAX_LEN)), ITEMS - 2) + 1  # codes 2..ITEMS-1
    real = np.arange(MAX_LEN)[None, :] < lengths[:, None]
    items = np.where(real, items, 0)
    return {"item": items, "category": np.where(real, items % (CATS - 2) + 2, 0),
            "price": np.where(real, np.log1p(items) / 10, 0).astype(np.float32), "lengths": lengths}


def build(d_model: int, dropout: float):
    from rayrec.models.config import ModelConfig
    from rayrec.models.features import FeatureSpec
    from rayrec.models.session_model import SessionModel

    cfg = ModelConfig(arch="xlnet", masking="mlm", d_model=d_model, dropout=dropout, n_layer=2, n_head=4, max_len=MAX_LEN,
                      mlm_probability=0.15, features=["category", "price"], embedding_dim=64,
                      aggregation="concat", continuous="projection", continuous_projection=[d_model])
    features = [FeatureSpec("item", "categorical", True, ITEMS, "item", 64, 2),
                FeatureSpec("category", "categorical", True, CATS, "category", 64, 2),
                FeatureSpec("price", "continuous", True)]
    return SessionModel(cfg, features)


def batches(data: dict, steps: int):
    for i in range(steps):
        rows = slice((i * BATCH) % (len(data["item"]) - BATCH), None)
        yield {k: torch.from_numpy(data[k][rows][:BATCH]) for k in ("item", "category", "price")}


def measure(d_model: int, dropout: float, steps: int, data: dict) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = build(d_model, dropout).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, fused=True)

    def step(batch):
        loss = model(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    warm = list(batches(data, 3))
    for b in warm:
        step(b)
    counter = FlopCounterMode(display=False)
    with counter:
        step(warm[0])
    flops = counter.get_total_flops()
    masked = []
    t = time.perf_counter()
    for b in batches(data, steps):
        step(b)
    seconds = (time.perf_counter() - t) / steps
    for b in batches(data, 20):  # positions predicted per step (rows of the logits)
        torch.manual_seed(len(masked))
        masked.append(int((model.objective(b)[0].targets >= 2).sum()))
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for b in batches(data, 3):
            step(b)
    return {"d_model": d_model, "seconds": seconds, "flops": flops, "logit_rows": float(np.mean(masked)),
            "profile": where_time_goes(prof)}


def where_time_goes(prof) -> dict[str, float]:
    groups = {"matmul": ("mm", "addmm", "bmm", "matmul", "linear", "einsum", "baddbmm"),
              "logits softmax": ("logsumexp", "_log_softmax", "_log_softmax_backward_data", "_softmax",
                                 "_softmax_backward_data"),
              "copies": ("copy_", "clone", "contiguous", "cat", "fill_", "zero_"),
              "dropout rng": ("random_", "bernoulli_", "uniform_"),
              "elementwise": ("mul", "mul_", "add", "add_", "sub", "sub_", "div", "div_", "exp", "exp_", "gelu",
                              "gelu_backward", "where", "ge", "sum", "amax", "tanh", "neg", "masked_fill",
                              "masked_fill_", "relu", "threshold_backward", "sigmoid", "pow", "sqrt", "rsqrt"),
              "optimizer": ("_fused_adamw", "_fused_adamw_", "adamw"),
              "embedding/index": ("embedding", "embedding_dense_backward", "embedding_backward", "index_select",
                                  "index", "index_put_", "_index_put_impl_", "gather", "scatter_add_", "scatter"),
              "layer_norm": ("native_layer_norm", "native_layer_norm_backward")}
    totals: dict[str, float] = defaultdict(float)
    for e in prof.key_averages():
        name = e.key.split("::")[-1]
        group = next((g for g, ops in groups.items() if name in ops), "other")
        totals[group] += e.self_cpu_time_total
    whole = sum(totals.values()) or 1.0
    return {g: round(100 * v / whole, 1) for g, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def t4r(d_model: int, data: dict, valid: dict, threads: int, work: str) -> dict | None:
    """T4R's own run: its XLNetConfig.build defaults (dropout 0.3), mlm_probability 0.15."""
    for name, d in (("train", data), ("valid", valid)):
        os.makedirs(os.path.join(work, name), exist_ok=True)
        n = d["lengths"]
        table = pa.table({  # T4R's columns: ids 1..cardinality, 0 pads
            "item_id-list": [list(r[:k]) for r, k in zip(d["item"], n)],
            "category-list": [list(r[:k]) for r, k in zip(d["category"], n)],
            "price-list": pa.array([list(r[:k]) for r, k in zip(d["price"], n)], pa.list_(pa.float32()))})
        pq.write_table(table, os.path.join(work, name, "part.parquet"))
    return run_t4r(work, ["--item-col", "item_id-list", "--item-cardinality", str(ITEMS),
           "--cat-col", f"category-list:{CATS}", "--cont-col", "price-list", "--arch", "xlnet", "--masking", "mlm",
           "--d-model", str(d_model), "--n-layer", "2", "--n-head", "4", "--max-len", str(MAX_LEN),
           "--batch", str(BATCH), "--epochs", "1", "--threads", str(threads)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--dropout", type=float, default=0.3, help="0.3: Transformers4Rec's XLNet default")
    p.add_argument("--t4r", action="store_true", help="also train Transformers4Rec on the same sessions")
    p.add_argument("--system-malloc", action="store_true", help="leave glibc's defaults (no keep_freed_memory)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if not a.system_malloc:
        from rayrec.train.allocator import keep_freed_memory
        keep_freed_memory()
    flops_rate, bandwidth = machine_rates(a.threads)
    print(f"dropout {a.dropout}; machine: matmul {flops_rate / 1e9:.1f} GFLOP/s, copy bandwidth {bandwidth / 1e9:.1f} GB/s "
          f"on {a.threads} threads")
    data = sessions(BATCH * max(a.steps, 40), seed=0)
    valid = sessions(2048, seed=1)
    rows = []
    for name in a.configs:
        r = measure(CONFIGS[name], a.dropout, a.steps, data)
        compute = r["flops"] / flops_rate
        logits = 8 * r["logit_rows"] * ITEMS * 4 / bandwidth
        r.update(name=name, floor=compute + logits, floor_compute=compute, floor_logits=logits)
        if a.t4r:
            with tempfile.TemporaryDirectory() as work:
                r["t4r"] = t4r(CONFIGS[name], data, valid, a.threads, work)
        rows.append(r)
    print(f"{'config':>7} {'d':>4} {'steps/s':>8} {'seq/s':>7} {'ms/step':>8} {'GFLOP':>6} {'floor ms':>9} "
          f"{'(mm+logits)':>12} {'of floor':>8} {'T4R seq/s':>9} {'ratio':>6}")
    for r in rows:
        seq = BATCH / r["seconds"]
        peer = (r.get("t4r") or {}).get("train_sequences_per_s")
        print(f"{r['name']:>7} {r['d_model']:>4} {1 / r['seconds']:>8.2f} {seq:>7.0f} {1e3 * r['seconds']:>8.1f} "
              f"{r['flops'] / 1e9:>6.2f} {1e3 * r['floor']:>9.1f} "
              f"{1e3 * r['floor_compute']:>5.1f}+{1e3 * r['floor_logits']:<6.1f} {r['floor'] / r['seconds']:>8.0%} "
              f"{peer if peer else '-':>9} {f'{seq / peer:.1f}x' if peer else '-':>6}")
    for r in rows:
        print(f"where the time goes ({r['name']}): " + ", ".join(f"{g} {v}%" for g, v in r["profile"].items()))
    print(json.dumps({"matmul_gflops": flops_rate / 1e9, "bandwidth_gbs": bandwidth / 1e9,
                      "rows": [{k: v for k, v in r.items()} for r in rows]}, default=str))


if __name__ == "__main__":
    main()
