"""Ranking metrics for next-item prediction with one target per example.

For each example: g = items scored strictly higher than the target, t = other items
scored exactly equal. Ties are broken uniformly at random, so the target's 0-based
position is uniform on g..g+t and every metric is its exact expectation over that draw
(a model that scores everything alike ranks at chance, not at the top). Per position p:
  Recall@k (= HR@k) = [p < k]; Precision@k = [p < k] / k;
  NDCG@k = [p < k] / log2(p + 2); MRR@k = [p < k] / (p + 1);
  MAP@k = MRR@k (with a single relevant item, average precision is 1 / (p + 1)).
Sums are accumulated so that averages over batches and workers equal the full-set value.
"""
from __future__ import annotations

import torch

DEFAULT_KS = (10, 20)
# what training reports per evaluated day, and averages in metrics.json and metrics.csv
REPORTED = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "mrr@20", "map@20", "precision@20")


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(g, t): items strictly above the target, and other items tied with it."""
    target_scores = scores.gather(1, targets[:, None])
    greater = (scores > target_scores).sum(1)
    ties = (scores == target_scores).sum(1) - 1
    return greater, ties


def _prefix(values: torch.Tensor) -> torch.Tensor:
    return torch.cat([values.new_zeros(1), values.cumsum(0)])


def metric_sums(ranks, ks=DEFAULT_KS) -> dict[str, float]:
    """Sums over examples of each metric@k; `ranks` is (greater, ties) or plain ranks."""
    greater, ties = ranks if isinstance(ranks, tuple) else (ranks, torch.zeros_like(ranks))
    greater, ties = greater.long(), ties.long()
    out = {"count": float(len(greater))}
    span = (ties + 1).double()
    for k in ks:
        pos = torch.arange(k, dtype=torch.float64)
        cum_hit, cum_ndcg, cum_rr = _prefix(torch.ones(k, dtype=torch.float64)), \
            _prefix(1 / torch.log2(pos + 2)), _prefix(1 / (pos + 1))
        lo = greater.clamp(max=k)
        hi = (greater + ties + 1).clamp(max=k)  # positions lo..hi-1 fall inside the top k

        def expect(cum):
            return ((cum[hi] - cum[lo]) / span).sum().item()
        hit = expect(cum_hit)
        out[f"recall@{k}"] = hit
        out[f"precision@{k}"] = hit / k
        out[f"ndcg@{k}"] = expect(cum_ndcg)
        out[f"mrr@{k}"] = expect(cum_rr)
        out[f"map@{k}"] = out[f"mrr@{k}"]
    return out


def add_sums(total: dict[str, float], part: dict[str, float]) -> dict[str, float]:
    for key, v in part.items():
        total[key] = total.get(key, 0.0) + v
    return total


def finalize(sums: dict[str, float]) -> dict[str, float]:
    n = sums.get("count", 0.0)
    return {k: (v / n if n else 0.0) for k, v in sums.items() if k != "count"} | {"count": int(n)}
