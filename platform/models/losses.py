"""Cross-entropy over the catalogue, with label smoothing spread over the candidates only.

Columns that may never be a target (padding, unknown and null codes; in a sampled softmax
a negative equal to the row's target) carry -inf logits, so the smoothing mass goes to the
finite columns, not to all of them. This is plain torch; accel replaces
CatalogueCrossEntropy with a fused version that never holds more than one pass over the
[targets, catalogue] logits at a time (accel/losses.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ROW_QUANTUM = 64  # bf16: matmuls whose row count changes every step run on rows rounded up to this


def padded(n: int, quantum: int) -> int:
    return -(-n // quantum) * quantum


def smoothed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Mean cross-entropy of [N, C] logits; the smoothing mass over the finite columns."""
    if logits.dtype in (torch.float16, torch.bfloat16):  # autocast: the softmax statistics in fp32
        logits = logits.float()
    logp = torch.log_softmax(logits, -1)
    nll = -logp.gather(1, labels[:, None]).squeeze(1)
    if not smoothing:
        return nll.mean()
    finite = torch.isfinite(logits)
    uniform = -(logp.masked_fill(~finite, 0.0).sum(1) / finite.sum(1))
    return ((1 - smoothing) * nll + smoothing * uniform).mean()


class CatalogueCrossEntropy(nn.Module):
    """The next-item loss: cross-entropy(h @ w.T + b, labels), or of given logits."""

    def forward(self, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, labels: torch.Tensor,
                smoothing: float) -> torch.Tensor:
        return self.of_logits(F.linear(h, w, b), labels, smoothing)

    def of_logits(self, logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
        return smoothed_cross_entropy(logits, labels, smoothing)
