"""Ranking metrics for next-item prediction with one target per example.

Rank = the number of items scored strictly higher than the target (0 = top). From it,
Recall@k (= HR@k), NDCG@k = 1/log2(rank+2) and MRR@k = 1/(rank+1), each 0 beyond k.
Sums are accumulated so that averages over batches and workers equal the full-set value.
"""
from __future__ import annotations

import torch

DEFAULT_KS = (10, 20)


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    target_scores = scores.gather(1, targets[:, None])
    return (scores > target_scores).sum(1)


def metric_sums(ranks: torch.Tensor, ks=DEFAULT_KS) -> dict[str, float]:
    ranks = ranks.double()
    out = {"count": float(len(ranks))}
    for k in ks:
        hit = ranks < k
        out[f"recall@{k}"] = float(hit.sum())
        out[f"ndcg@{k}"] = float((hit / torch.log2(ranks + 2)).sum())
        out[f"mrr@{k}"] = float((hit / (ranks + 1)).sum())
    return out


def add_sums(total: dict[str, float], part: dict[str, float]) -> dict[str, float]:
    for key, v in part.items():
        total[key] = total.get(key, 0.0) + v
    return total


def finalize(sums: dict[str, float]) -> dict[str, float]:
    n = sums.get("count", 0.0)
    return {k: (v / n if n else 0.0) for k, v in sums.items() if k != "count"} | {"count": int(n)}
