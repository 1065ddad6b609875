"""Output heads: next-item prediction over the catalogue, and sequence-level binary /
regression heads for multi-task training.

The next-item head scores only real item codes (code >= first_item): padding, unknown
and null codes are never a target nor a recommendation. Its full softmax builds
[targets, catalogue] logits; the sampled softmax builds [targets, candidates] logits
(in-batch targets and/or log-uniform negatives, with logQ correction), so catalogues of
millions of items train in bounded memory. Top-k walks the catalogue in chunks.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rayrec.models.config import HeadConfig, ModelConfig
from rayrec.models.losses import ROW_QUANTUM, CatalogueCrossEntropy

NEG = float("-inf")


class NextItemHead(nn.Module):
    def __init__(self, cfg: ModelConfig, item_table: nn.Embedding, first_item: int):
        super().__init__()
        self.cfg, self.first = cfg, first_item
        self.n_items, dim = item_table.weight.shape
        self.item_table = item_table if cfg.tie_weights else None
        self.weight = None if cfg.tie_weights else nn.Parameter(torch.randn(self.n_items, cfg.d_model) * 0.02)
        width = dim if cfg.tie_weights else cfg.d_model
        self.project = nn.Linear(cfg.d_model, width) if width != cfg.d_model else nn.Identity()
        self.bias = nn.Parameter(torch.zeros(self.n_items))
        self.cross_entropy = CatalogueCrossEntropy()   # accel fuses it (accel/losses.py)

    def item_weight(self) -> torch.Tensor:
        return self.item_table.weight if self.item_table is not None else self.weight

    def scores(self, hidden: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Logits of codes [start, stop) for hidden states [N, d_model]."""
        return F.linear(*self.linear_parts(hidden, start, stop))

    def linear_parts(self, hidden: torch.Tensor, start: int = 0, stop: int | None = None):
        """(h, w, b) with logits = h @ w.T + b; the temperature is folded into h and b, not
        applied to the logits, the step's largest tensor."""
        w, b = self.item_weight()[start:stop], self.bias[start:stop]
        t = self.cfg.temperature
        h, w = self.unit(self.project(hidden)), self.unit(w)
        return (h, w, b) if t == 1 else (h / t, w, b / t)

    def unit(self, vectors: torch.Tensor) -> torch.Tensor:
        """Session or item vectors as the logits' dot products use them: unit length under
        `normalize` (cosine scores, so that an item's logit does not grow with its
        embedding's norm, as frequent items' norms otherwise do)."""
        return F.normalize(vectors, dim=-1) if self.cfg.normalize else vectors

    def full_scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, n_items], -inf at codes below first_item. Under autocast (training: ELECTRA's
        generator) the rows are padded to a multiple of ROW_QUANTUM, so that the bf16
        matmul's shape repeats across steps (see accel/losses.py)."""
        n = len(hidden)
        if torch.is_autocast_enabled(hidden.device.type) and n % ROW_QUANTUM:
            hidden = torch.cat([hidden, hidden.new_zeros((ROW_QUANTUM - n % ROW_QUANTUM, *hidden.shape[1:]))])
        h, w, b = self.linear_parts(hidden)
        # the bias and the -inf columns in place: addmm would first copy the bias into every
        # row, and an out-of-place fill copies the whole [N, n_items] block again
        out = F.linear(h, w)[:n]
        out.add_(b)
        out[:, :self.first] = NEG
        return out

    def loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.cfg.loss == "sampled":
            logits, labels = self.sampled_logits(hidden, targets)
            return self.cross_entropy.of_logits(logits, labels, self.cfg.label_smoothing)
        return self.cross_entropy(*self.linear_parts(hidden, self.first), targets - self.first,
                                    self.cfg.label_smoothing)

    def sampled_logits(self, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Candidates: the batch's targets (row i's positive is column i) and/or K
        log-uniform negatives. Accidental hits (a candidate equal to the row's target,
        other than its positive) are removed; logQ subtracts each candidate's log
        sampling probability so that frequent items are not over-penalised.
        The [targets, candidates] matrix is the step's largest tensor: it is written by one
        matmul (bias, logQ and temperature folded in) and patched only at the hits."""
        cfg, n = self.cfg, len(targets)
        h, w, b = self.unit(self.project(hidden)), self.item_weight(), self.bias
        h = h / cfg.temperature if cfg.temperature != 1 else h
        cand, logq = [], []
        if cfg.sampled_in_batch:
            _, inverse, counts = torch.unique(targets, return_inverse=True, return_counts=True)
            cand.append(targets)
            logq.append(torch.log(counts[inverse].float() / n))
        if cfg.sampled_negatives:
            negatives, q = log_uniform(cfg.sampled_negatives, self.n_items - self.first, targets.device)
            cand.append(negatives + self.first)
            logq.append(torch.log(q * cfg.sampled_negatives))
        cand_ids, cand_logq = torch.cat(cand), torch.cat(logq)
        bias = b[cand_ids] - cand_logq if cfg.sampled_logq else b[cand_ids]
        logits = F.linear(h, self.unit(w[cand_ids]), bias / cfg.temperature)
        rows, cols = equal_pairs(targets, cand_ids)
        if cfg.sampled_in_batch:  # row i's own column i is its positive, not a hit
            keep = rows != cols
            rows, cols = rows[keep], cols[keep]
        # Removed outside autograd: softmax gives a -inf logit zero probability and zero
        # gradient, which is exactly the gradient of the masked loss, and autograd then
        # needs no copy of this, the step's largest tensor.
        logits.data.index_put_((rows, cols), torch.tensor(NEG, dtype=logits.dtype))  # bf16 under autocast
        if cfg.sampled_in_batch:
            return logits, torch.arange(n, device=targets.device)
        pos = (h * self.unit(w[targets])).sum(-1, keepdim=True) + (b[targets, None] / cfg.temperature)
        if cfg.sampled_logq:
            r = (targets - self.first).double()
            pos = pos - torch.log(cfg.sampled_negatives * torch.log((r + 2) / (r + 1)) /
                                  math.log(self.n_items - self.first + 1)).float()[:, None]
        return torch.cat([pos, logits], 1), torch.zeros(n, dtype=torch.long, device=targets.device)

    def topk(self, hidden: torch.Tensor, k: int, exclude: torch.Tensor | None = None,
             chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k (scores, codes) over codes >= first_item, chunk by chunk: memory is
        [N, chunk], not [N, catalogue]. `exclude` [N, L] codes get -inf (0 = none)."""
        k = min(k, self.n_items - self.first)
        best_s = best_i = None
        for start in range(self.first, self.n_items, chunk):
            stop = min(start + chunk, self.n_items)
            s = self.scores(hidden, start, stop)
            if exclude is not None:
                s = drop_codes(s, exclude, start, stop)
            ids = torch.arange(start, stop, device=s.device)[None, :].expand_as(s)
            if best_s is not None:
                s, ids = torch.cat([best_s, s], 1), torch.cat([best_i, ids], 1)
            if s.shape[1] > k:  # keep only the best k so far
                s, i = torch.topk(s, k, dim=1)
                ids = ids.gather(1, i)
            best_s, best_i = s, ids
        s, i = torch.sort(best_s, dim=1, descending=True)
        return s, best_i.gather(1, i)


def equal_pairs(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All (i, j) with a[i] == b[j], found by sorting b (never an [len(a), len(b)] mask)."""
    sorted_b, order = torch.sort(b)
    lo = torch.searchsorted(sorted_b, a)
    m = torch.searchsorted(sorted_b, a, right=True) - lo
    rows = torch.repeat_interleave(torch.arange(len(a), device=a.device), m)
    offsets = torch.arange(len(rows), device=a.device) - torch.repeat_interleave(torch.cumsum(m, 0) - m, m)
    return rows, order[lo[rows] + offsets]


def drop_codes(scores: torch.Tensor, codes: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """-inf at the given codes that fall in [start, stop); others go to a spill column."""
    local = codes - start
    inside = (local >= 0) & (local < stop - start) & (codes > 0)
    local = torch.where(inside, local, torch.full_like(local, stop - start))
    spill = torch.cat([scores, torch.zeros_like(scores[:, :1])], 1)
    return spill.scatter(1, local, NEG)[:, :-1]


def log_uniform(k: int, size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """k ranks in [0, size) from P(r) = log((r+2)/(r+1)) / log(size+1), and P of each.
    Categorify numbers items by descending frequency, so this is a Zipf-like proposal."""
    u = torch.rand(k, device=device, dtype=torch.float64)
    r = (torch.exp(u * math.log(size + 1)) - 1).floor().long().clamp(max=size - 1)
    p = torch.log((r + 2.0) / (r + 1.0)) / math.log(size + 1)
    return r, p.float()


def summarize(hidden: torch.Tensor, attend: torch.Tensor, how: str) -> torch.Tensor:
    """One vector per sequence from [B, L, d] over its attended positions."""
    if how == "mean":
        w = attend.to(hidden.dtype)[..., None]
        return (hidden * w).sum(1) / w.sum(1).clamp(min=1)
    idx = torch.zeros_like(attend[:, 0], dtype=torch.long) if how == "first" \
        else (attend.sum(1) - 1).clamp(min=0)
    return hidden.gather(1, idx[:, None, None].expand(-1, 1, hidden.shape[-1])).squeeze(1)


class SequenceHead(nn.Module):
    """Binary classification (logit) or regression (value) of a whole session."""

    def __init__(self, head: HeadConfig, d_model: int):
        super().__init__()
        self.head = head
        self.out = nn.Sequential(nn.Linear(d_model, d_model), nn.ReLU(), nn.Linear(d_model, 1))

    def forward(self, hidden: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        return self.out(summarize(hidden, attend, self.head.summary)).squeeze(-1)

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.to(prediction.dtype)
        if self.head.task == "binary":
            return F.binary_cross_entropy_with_logits(prediction, target)
        return F.mse_loss(prediction, target)
