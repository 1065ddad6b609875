"""Scoring: top-k item codes for a batch of encoded sessions, behind a small interface.

The predictor encodes raw events and decodes codes; everything between is a Scorer, so
that eager torch today and a TorchScript or ONNX Runtime session, or a Triton client,
later answer the same call. A scorer sees codes only, never raw ids.
"""
from __future__ import annotations

from typing import Protocol

import torch

from rayrec.models.heads import NEG


class Scorer(Protocol):
    def topk(self, batch: dict[str, torch.Tensor], k: int, banned: torch.Tensor | None = None,
             allowed: list[torch.Tensor | None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes [N, k], scores [N, k]), best first, for N right-padded sessions.

        banned [N, L]: codes never returned for that row (0 pads). allowed[i], when not
        None: row i's only candidates. A row with fewer than k candidates is filled with
        code 0 and score -inf."""


class TorchScorer:
    """The model in eager torch. The catalogue is scored in chunks: memory per batch is
    [N, chunk], whatever the catalogue's size."""

    def __init__(self, model, chunk: int = 65536, device: str = "cpu"):
        self.model, self.chunk, self.device = model.eval(), chunk, torch.device(device)

    @torch.no_grad()
    def topk(self, batch, k, banned=None, allowed=None):
        if self.device.type != "cpu":
            codes, scores = self.topk_on_device(batch, k, banned, allowed)
            return codes.cpu(), scores.cpu()
        return self.topk_on_device(batch, k, banned, allowed)

    def topk_on_device(self, batch, k, banned, allowed):
        m, to = self.model, (lambda t: None if t is None else t.to(self.device, non_blocking=True))
        batch = {name: to(t) for name, t in batch.items()}
        banned, allowed = to(banned), allowed and [to(a) for a in allowed]
        hidden = m.next_item_hidden(m.prepare(batch))
        scores, codes = m.next_item.topk(hidden, k, banned, self.chunk)
        if scores.shape[1] < k:   # a catalogue smaller than k
            scores, codes = pad_k(scores, codes, k)
        for i, only in enumerate(allowed or []):
            if only is not None:
                scores[i], codes[i] = self.among(hidden[i:i + 1], only, k, None if banned is None else banned[i:i + 1])
        return codes, scores

    def among(self, hidden: torch.Tensor, only: torch.Tensor, k: int, banned: torch.Tensor | None):
        """Top-k of one row over the listed codes only: O(len(only)), not O(catalogue)."""
        only = only[only >= self.model.next_item.first]
        h, w, b = self.model.next_item.linear_parts(hidden)
        s = h @ w[only].T + b[only]
        if banned is not None:   # mask by position in `only`: the banned codes' places there
            hit = (only[None, :, None] == banned[:, None, :]).any(-1) & (only[None, :] > 0)
            s = s.masked_fill(hit, NEG)
        s, i = torch.topk(s, min(k, s.shape[1]), dim=1)
        s, c = pad_k(s, only[i], k)
        return s[0], c[0]


def pad_k(scores: torch.Tensor, codes: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    short = k - scores.shape[1]
    if short <= 0:
        return scores, codes
    return (torch.cat([scores, scores.new_full((len(scores), short), NEG)], 1),
            torch.cat([codes, codes.new_zeros((len(codes), short))], 1))

