"""The fused loss's row passes (bf16 or fp32 logits) in one C loop each (softmax_rows.c,
built by native.py), with torch's blockwise passes in losses.py as the fallback.

Eager torch has no kernel that reads bf16 rows and makes their softmax statistics in fp32,
so the loss widened each block of logits, ran max, sub, exp and sum over it and narrowed it
back; in fp32 it still ran five passes (bias, max, sub, exp, sum) and the bias gradient's
column sums. The C loop does the same arithmetic reading and writing each row once: loss
forward + backward measured in BENCHMARKS.md (issue 16).
"""
from __future__ import annotations

import ctypes

import torch

from rayrec.accel.kernels import library

BIAS_CHUNK = 64  # rows per partial sum of the bias gradient


def supports(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float32)


def _check(x: torch.Tensor, labels: torch.Tensor) -> None:
    if not supports(x) or x.dim() != 2 or x.stride(1) != 1:
        raise ValueError("softmax_rows: expected a CPU bf16 or fp32 [rows, columns] view with contiguous rows")
    if labels.dtype != torch.int64 or not labels.is_contiguous() or len(labels) != len(x):
        raise ValueError("softmax_rows: expected contiguous int64 labels, one per row")
    if len(labels) and not (0 <= int(labels.min()) and int(labels.max()) < x.shape[1]):  # C reads x[i, label]
        raise IndexError(f"softmax_rows: a label lies outside the {x.shape[1]} columns")


def forward(x: torch.Tensor, labels: torch.Tensor, with_total: bool, bias: torch.Tensor | None = None,
            lib: ctypes.CDLL | None = None):
    """x <- exp(x + bias - rowmax) in place; returns (logsumexp, 1 / sum, logit at the label,
    row sums of the logits or None), the logits being x + bias."""
    _check(x, labels)
    n, c = x.shape
    if bias is not None and (bias.dtype != torch.float32 or not bias.is_contiguous() or len(bias) != c):
        raise ValueError(f"softmax_rows: expected a contiguous fp32 bias of {c} columns")
    lse, inv, picked = (torch.empty(n, dtype=torch.float32) for _ in range(3))
    total = torch.empty(n, dtype=torch.float32) if with_total else None
    (lib or library()).softmax_rows_forward(n, x.data_ptr(), int(x.dtype == torch.bfloat16), c, x.stride(0),
                                            bias.data_ptr() if bias is not None else None, labels.data_ptr(),
                                            lse.data_ptr(), inv.data_ptr(), picked.data_ptr(),
                                            total.data_ptr() if total is not None else None, torch.get_num_threads())
    return lse, inv, picked, total


def backward(x: torch.Tensor, labels: torch.Tensor, inv: torch.Tensor, scale: float, spread: float,
             target: float, bias_grad: bool = False, lib: ctypes.CDLL | None = None) -> torch.Tensor | None:
    """The forward's exp(x - rowmax) <- x * inv * scale - spread, and - target at each label;
    with `bias_grad`, returns the column sums of that gradient."""
    _check(x, labels)
    inv = inv.contiguous()
    # the bias gradient: one partial sum per fixed chunk of rows, added in order, so that it
    # is the same bits on any number of threads (an exact resume may run on another count)
    n = len(x)
    sums = torch.zeros((max(1, -(-n // BIAS_CHUNK)), x.shape[1]), dtype=torch.float32) if bias_grad else None
    (lib or library()).softmax_rows_backward(n, x.data_ptr(), int(x.dtype == torch.bfloat16), x.shape[1],
                                             x.stride(0), labels.data_ptr(), inv.data_ptr(), scale, spread, target,
                                             sums.data_ptr() if sums is not None else None, BIAS_CHUNK,
                                             torch.get_num_threads())
    return sums.sum(0) if sums is not None else None


def sample(x: torch.Tensor, target: torch.Tensor, lib: ctypes.CDLL | None = None) -> torch.Tensor:
    """[n] int64: per row of non-negative weights x (bf16 or fp32, e.g. forward's exp), the
    first column whose running sum reaches target (drawn in (0, row total])."""
    if not supports(x) or x.dim() != 2 or x.stride(1) != 1 or target.shape != (len(x),):
        raise ValueError("softmax_rows.sample: expected CPU bf16 or fp32 rows [n, c] and one target per row")
    target = target.float().contiguous()
    out = torch.empty(len(x), dtype=torch.int64)
    (lib or library()).sample_rows(len(x), x.data_ptr(), int(x.dtype == torch.bfloat16), x.shape[1], x.stride(0),
                                   target.data_ptr(), out.data_ptr(), torch.get_num_threads())
    return out
