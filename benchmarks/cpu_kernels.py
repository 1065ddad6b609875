"""rayrec's C kernels against the same arithmetic in torch passes (model.accel_kernels: off),
issue 16: the fused loss (softmax_rows.c), forward + backward, dropout (dropout.c),
forward alone and forward + backward, and the packed GRU's gates (gru.c), two layers
forward + backward.

The loss's shapes are [predicted positions x d_model] against a catalogue: its own sizes
in the train matrix (1,250 rows of a batch of 256 x 20 under CLM) and a large catalogue.
Dropout runs on a transformer's [256 x 20 x 768] feed-forward activations; the GRU on a
batch of 256 sessions whose lengths are the train matrix's (about 6 of 20). Both variants run
in the same process, alternated twice, after warm-up; a figure is the mean of 12 calls.

    python benchmarks/cpu_kernels.py [--threads 2]

The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from rayrec.accel import Accel, gru as gru_fast, kernels as native
from rayrec.accel.dropout import fast_dropout
from rayrec.accel.losses import LinearCrossEntropy
from rayrec.train.allocator import keep_freed_memory

SHAPES = [(1250, 64, 19_807), (1250, 192, 19_807), (448, 64, 119_357)]
PRECISIONS = {"bf16": torch.bfloat16, "fp32": None}


def ms_per_call(n: int, d: int, c: int, mm_dtype, use_c: bool, calls: int = 12) -> float:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(n, d, generator=g, requires_grad=True)
    w = (torch.randn(c, d, generator=g) * 0.1).requires_grad_()
    b = torch.zeros(c, requires_grad=True)
    y = torch.randint(0, c, (n,), generator=g)

    return timed(lambda: LinearCrossEntropy.apply(h, w, b, y, 0.0, mm_dtype, use_c).backward(), calls)


def dropout_ms(dtype, backward: bool, use_c: bool, calls: int = 12) -> float:
    x = torch.randn(256, 20, 768).to(dtype).requires_grad_(backward)
    g = torch.ones(256, 20, 768, dtype=dtype)

    def call():
        y = fast_dropout(x, 0.3, use_c=use_c)
        if backward:
            y.backward(g)
            x.grad = None

    return timed(call, calls)


def gru_ms(d: int, use_c: bool, calls: int = 12) -> float:
    g = torch.Generator().manual_seed(0)
    rnn = torch.nn.GRU(d, d, 2, batch_first=True, dropout=0.1)
    rnn.rayrec_accel = Accel(kernels=use_c, unpad=True)   # what accel.apply tells a model's GRU
    x = torch.randn(256, 20, d, generator=g, requires_grad=True)
    torch.manual_seed(0)
    lengths = (torch.distributions.Geometric(probs=torch.tensor(1 / 6)).sample((256,)) + 1).clamp(max=20)
    attend = torch.arange(20) < lengths[:, None]

    def call():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = gru_fast.gru(rnn, x, attend)
        out.square().mean().backward()

    return timed(call, calls)


def timed(call, calls: int) -> float:
    """ms per call after 4 warm-up calls."""
    for _ in range(4):
        call()
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls * 1e3


def compare(fn) -> tuple[list[float], list[float]]:
    """fn(use_c) timed on the torch passes and on C, alternated twice."""
    times = {False: [], True: []}
    for use_c in (False, True, False, True):
        times[use_c].append(fn(use_c))
    return times[False], times[True]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    keep_freed_memory()
    if native.library() is None:
        raise SystemExit(f"C kernels {native.status()}: nothing to compare")
    print(f"{a.threads} threads; C kernels: {native.library()._name}")
    print("| kernel and shape | precision | torch passes (ms) | C passes (ms) | speed-up |")
    print("| --- | --- | --- | --- | --- |")
    rows = []
    for n, d, c in SHAPES:
        for name, mm_dtype in PRECISIONS.items():
            slow, fast = compare(lambda use_c: ms_per_call(n, d, c, mm_dtype, use_c))
            rows.append(row(f"loss {n:,} x {d} x {c:,}", name, slow, fast))
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        for backward in (False, True):
            slow, fast = compare(lambda use_c: dropout_ms(dtype, backward, use_c))
            rows.append(row(f"dropout 256 x 20 x 768, p 0.3, {'fwd+bwd' if backward else 'fwd'}", name, slow, fast))
    for d in (64, 192):
        slow, fast = compare(lambda use_c: gru_ms(d, use_c))
        rows.append(row(f"gru 2 layers, 256 x 20 x {d}, fwd+bwd", "bf16", slow, fast))
    print(json.dumps({"threads": a.threads, "rows": rows}))


def row(what: str, precision: str, slow: list[float], fast: list[float]) -> dict:
    torch_ms, c_ms = sum(slow) / len(slow), sum(fast) / len(fast)
    print(f"| {what} | {precision} | {' / '.join(f'{t:.1f}' for t in slow)} | "
          f"{' / '.join(f'{t:.1f}' for t in fast)} | {torch_ms / c_ms:.2f}x |", flush=True)
    return {"what": what, "precision": precision, "torch_ms": round(torch_ms, 2), "c_ms": round(c_ms, 2),
            "speedup": round(torch_ms / c_ms, 2)}


if __name__ == "__main__":
    main()
