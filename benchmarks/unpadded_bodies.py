"""Bodies on the real positions only against the same bodies on the whole padded grid
(model.accel_unpad: false), issue 16: one training step's body forward + backward, per body and
width.

The batch is 256 sessions at max_len 20 whose lengths are drawn from real sessions: the
yoochoose-100k clicks in ../shared/data (mean 4 events; 9% reach 10). `--lengths full`
fills every position instead (nothing to skip, so it shows the paths' own cost). Both
variants run in the same process, alternated twice, after warm-up, in bf16 autocast (the
CPU default on AMX machines) or fp32; a figure is the mean of 10 calls.

    python benchmarks/unpadded_bodies.py [--threads 2] [--precision bf16] [--lengths yoochoose]

The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from rayrec.accel import apply
from rayrec.models.bodies import build_body
from rayrec.models.config import ModelConfig
from rayrec.train.allocator import keep_freed_memory

BODIES = [("gpt2", "clm"), ("llama", "clm"), ("electra", "mlm"), ("bert", "mlm"), ("xlnet", "mlm"), ("gru", "clm")]
WIDTHS = (64, 192)
BATCH, MAX_LEN = 256, 20
CLICKS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "yoochoose-100k", "train.tsv")


def session_lengths(kind: str) -> np.ndarray:
    if kind == "full":
        return np.full(BATCH * 40, MAX_LEN)
    sessions = np.loadtxt(CLICKS, delimiter="\t", skiprows=1, usecols=0, dtype=np.int64)
    return np.minimum(np.unique(sessions, return_counts=True)[1], MAX_LEN)


def step_ms(arch: str, masking: str, d: int, lengths: np.ndarray, dtype, unpad: bool, calls: int = 10) -> float:
    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, masking=masking, d_model=d, n_layer=2, n_head=4, max_len=MAX_LEN, accel_unpad=unpad)
    body = build_body(cfg).train()
    apply(body, cfg)
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(calls + 4):
        n = torch.from_numpy(rng.choice(lengths, BATCH))
        batches.append((torch.randn(BATCH, MAX_LEN, d), torch.arange(MAX_LEN) < n[:, None]))

    def call(x, attend):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
            out = body(x, attend)
        (out.float() * attend[..., None]).square().mean().backward()

    for x, attend in batches[:4]:
        call(x, attend)
    start = time.perf_counter()
    for x, attend in batches[4:]:
        call(x, attend)
    return (time.perf_counter() - start) / calls * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--lengths", choices=["yoochoose", "full"], default="yoochoose")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    keep_freed_memory()
    lengths = session_lengths(a.lengths)
    dtype = torch.bfloat16 if a.precision == "bf16" else None
    print(f"{a.threads} threads, {a.precision}; session lengths: {a.lengths} (mean {lengths.mean():.1f} of {MAX_LEN})")
    print("| body | masking | d_model | whole grid (ms) | real positions (ms) | speed-up |")
    print("| --- | --- | --- | --- | --- | --- |")
    rows = []
    for arch, masking in BODIES:
        for d in WIDTHS:
            times = {False: [], True: []}
            for unpad in (False, True, False, True):
                times[unpad].append(step_ms(arch, masking, d, lengths, dtype, unpad))
            grid, real = np.mean(times[False]), np.mean(times[True])
            print(f"| {arch} | {masking} | {d} | {' / '.join(f'{t:.1f}' for t in times[False])} | "
                  f"{' / '.join(f'{t:.1f}' for t in times[True])} | {grid / real:.2f}x |", flush=True)
            rows.append({"body": arch, "masking": masking, "d_model": d, "grid_ms": round(grid, 2),
                         "rows_ms": round(real, 2), "speedup": round(grid / real, 2)})
    print(json.dumps({"threads": a.threads, "precision": a.precision, "lengths": a.lengths, "rows": rows}))


if __name__ == "__main__":
    main()
