import math
import random

import torch

from rayrec.metrics import add_sums, finalize, metric_sums, target_ranks


def reference(scores, target, k):
    """Plain Python: rank = items scored strictly higher than the target."""
    rank = sum(1 for s in scores if s > scores[target])
    hit = rank < k
    return {"recall": float(hit), "ndcg": (1 / math.log2(rank + 2)) if hit else 0.0,
            "mrr": (1 / (rank + 1)) if hit else 0.0}


def test_metrics_match_reference_with_ties_and_batches():
    rng = random.Random(0)
    rows = [[float(rng.randint(0, 5)) for _ in range(30)] for _ in range(200)]  # many ties
    targets = [rng.randrange(30) for _ in rows]
    total = {}
    for i in range(0, 200, 37):  # uneven batches must sum to the full-set value
        s = torch.tensor(rows[i:i + 37])
        t = torch.tensor(targets[i:i + 37])
        add_sums(total, metric_sums(target_ranks(s, t), ks=(1, 5, 10)))
    got = finalize(total)
    for k in (1, 5, 10):
        ref = [reference(r, t, k) for r, t in zip(rows, targets)]
        for m in ("recall", "ndcg", "mrr"):
            assert abs(got[f"{m}@{k}"] - sum(x[m] for x in ref) / len(ref)) < 1e-12
    assert got["count"] == 200
