"""The fused loss with its row passes in C (softmax_rows.c) against the same loss with
torch's passes (RAYREC_NATIVE_KERNELS=0), forward + backward, issue 16.

Each shape is [predicted positions x d_model] against a catalogue, the loss's own sizes
in the train matrix (1,250 rows of a batch of 256 x 20 under CLM) and a large catalogue.
Both variants run in the same process, alternated twice, after warm-up; the figure is the
mean of 12 calls.

    python benchmarks/loss_kernels.py [--threads 2]

The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from rayrec.models import native
from rayrec.models.losses import LinearCrossEntropy
from rayrec.train.allocator import keep_freed_memory

SHAPES = [(1250, 64, 19_807), (1250, 192, 19_807), (448, 64, 119_357)]
PRECISIONS = {"bf16": torch.bfloat16, "fp32": None}


def ms_per_call(n: int, d: int, c: int, mm_dtype, calls: int = 12) -> float:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(n, d, generator=g, requires_grad=True)
    w = (torch.randn(c, d, generator=g) * 0.1).requires_grad_()
    b = torch.zeros(c, requires_grad=True)
    y = torch.randint(0, c, (n,), generator=g)

    def call():
        LinearCrossEntropy.apply(h, w, b, y, 0.0, mm_dtype).backward()

    for _ in range(4):
        call()
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    keep_freed_memory()
    if native.library() is None:
        raise SystemExit("no C compiler here: nothing to compare")
    print(f"{a.threads} threads; C kernels: {native.library()._name}")
    print("| rows x d_model x catalogue | precision | torch passes (ms) | C passes (ms) | speed-up |")
    print("| --- | --- | --- | --- | --- |")
    rows = []
    for n, d, c in SHAPES:
        for name, mm_dtype in PRECISIONS.items():
            times = {"0": [], "1": []}
            for use_c in "0101":
                os.environ["RAYREC_NATIVE_KERNELS"] = use_c
                times[use_c].append(ms_per_call(n, d, c, mm_dtype))
            torch_ms, c_ms = (sum(times[k]) / 2 for k in "01")
            rows.append({"rows": n, "d_model": d, "catalogue": c, "precision": name,
                         "torch_ms": round(torch_ms, 1), "c_ms": round(c_ms, 1), "speedup": round(torch_ms / c_ms, 2)})
            print(f"| {n:,} x {d} x {c:,} | {name} | {' / '.join(f'{t:.1f}' for t in times['0'])} | "
                  f"{' / '.join(f'{t:.1f}' for t in times['1'])} | {torch_ms / c_ms:.2f}x |", flush=True)
    os.environ.pop("RAYREC_NATIVE_KERNELS")
    print(json.dumps({"threads": a.threads, "rows": rows}))


if __name__ == "__main__":
    main()
