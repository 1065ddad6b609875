"""Training objectives as masks over right-padded item codes [B, L] (0 = padding).

Each scheme says which positions predict which item (`targets`, 0 = no target), which
positions' inputs are hidden behind the mask embedding (`hide`), and for XLNet's
permutation LM the perm_mask of its two-stream attention. A position's output never
sees its own target: clm shifts the targets left under causal attention; mlm, plm and
rtd hide the target's whole input vector (every feature of that position), or, for XLNet
plm, let only the query stream (which excludes a position's own content) predict it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

PAD = 0


@dataclass
class Masked:
    targets: torch.Tensor                   # [B, L] item code predicted at each position, 0 = none
    hide: torch.Tensor | None = None        # [B, L] positions whose input is the mask embedding
    perm_mask: torch.Tensor | None = None   # [B, L, L] XLNet plm: 1 = query i may not see j


def mask_clm(items: torch.Tensor) -> Masked:
    """Each position predicts the next item (under causal attention)."""
    return Masked(targets=torch.nn.functional.pad(items[:, 1:], (0, 1), value=PAD))


def mask_mlm(items: torch.Tensor, probability: float) -> Masked:
    """Random positions, each real one with `probability`, at least one per session (its
    last item when the draw picked none); they are hidden and predicted."""
    real = items != PAD
    chosen = (torch.rand(items.shape, device=items.device) < probability) & real
    return _masked(items, ensure_one(chosen, real))


def ensure_one(chosen: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    none = ~chosen.any(1) & real.any(1)
    last = (real.sum(1) - 1).clamp(min=0)
    chosen = chosen.clone()
    chosen[none, last[none]] = True
    return chosen


def _masked(items: torch.Tensor, chosen: torch.Tensor) -> Masked:
    return Masked(targets=items.masked_fill(~chosen, PAD), hide=chosen)


def plm_spans(items: torch.Tensor, probability: float, max_span: int) -> torch.Tensor:
    """XLNet's span sampling: walk each sequence in windows of span/probability positions
    and predict one span of 1..max_span consecutive positions in each."""
    real = items != PAD
    B, L = items.shape
    lengths = real.sum(1).tolist()
    chosen = torch.zeros(B, L, dtype=torch.bool)
    draws = torch.rand(B, L, 2).tolist()  # one host draw, cheap to index in the loop
    for b, n in enumerate(lengths):
        cur, i = 0, 0
        while cur < n and i < L:
            span = 1 + int(draws[b][i][0] * max_span)
            window = max(span, int(span / probability))
            start = cur + int(draws[b][i][1] * (window - span + 1))
            chosen[b, start:min(start + span, n)] = True
            cur += window
            i += 1
    return ensure_one(chosen.to(items.device) & real, real)


def mask_plm(items: torch.Tensor, probability: float, max_span: int, two_stream: bool) -> Masked:
    """Permutation LM. With XLNet's two streams (`two_stream`): a random factorization order
    puts every non-target first; target i may see non-targets and the targets before it in
    the order, never itself nor later ones. Without two streams the targets are hidden
    instead (span-masked LM with XLNet's span sampling)."""
    chosen = plm_spans(items, probability, max_span)
    if not two_stream:
        return _masked(items, chosen)
    order = torch.rand(items.shape, device=items.device).masked_fill(~chosen, -1.0)
    # query i may not see position j when j is a target at or after i in the order
    perm = (order[:, :, None] <= order[:, None, :]) & chosen[:, None, :]
    return Masked(targets=items.masked_fill(~chosen, PAD), perm_mask=perm.float())


def eval_slot(items: torch.Tensor, two_stream: bool) -> Masked:
    """Inference for mask-based schemes: the position right after the last item is the
    one to predict; its input is the mask embedding (and no stream may read it)."""
    lengths = (items != PAD).sum(1)
    slot = torch.arange(items.shape[1], device=items.device)[None, :] == lengths[:, None]
    perm = slot[:, None, :].expand(-1, items.shape[1], -1).float() if two_stream else None
    return Masked(targets=torch.zeros_like(items), hide=slot, perm_mask=perm)


class ProposalSampler(nn.Module):
    """ELECTRA's proposals: one draw per row from softmax(logits) ([N, C], -inf where an
    item may not be drawn); `logits` may be overwritten. accel replaces it with C passes
    (accel/sampling.py): the softmax and [N, C] cumulative sum here were a fifth of an
    ELECTRA-rtd CPU step."""

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return sample_rows(torch.softmax(logits.float(), -1))


def sample_rows(weights: torch.Tensor) -> torch.Tensor:
    """One categorical draw per row of non-negative [N, C] weights, by the inverse CDF:
    one cumulative sum and a binary search per row. torch.multinomial draws an exponential
    variate per weight instead, half of an ELECTRA training step on CPU at 20k items."""
    cdf = weights.float().cumsum(1)
    u = (1.0 - torch.rand(len(cdf), 1, device=cdf.device)) * cdf[:, -1:]  # in (0, total]: never a zero weight
    return torch.searchsorted(cdf, u).squeeze(1).clamp_(max=cdf.shape[1] - 1)


def replace_tokens(items: torch.Tensor, masked: torch.Tensor, proposals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ELECTRA's corruption: masked positions take the generator's proposals; the label
    says which positions now differ from the original."""
    corrupted = torch.where(masked, proposals, items)
    return corrupted, (corrupted != items) & (items != PAD)
