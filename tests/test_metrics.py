import math
import random

import torch

from rayrec.metrics import add_sums, finalize, metric_sums, target_ranks


def reference(scores, target, k):
    """Plain Python, one item list at a time: sort the catalogue by score with ties broken
    every possible way (the target anywhere among its equals) and average the metrics."""
    higher = [i for i, s in enumerate(scores) if s > scores[target]]
    equal = [i for i, s in enumerate(scores) if s == scores[target] and i != target]
    totals = {"precision": 0.0, "recall": 0.0, "ndcg": 0.0, "map": 0.0, "mrr": 0.0}
    for place in range(len(equal) + 1):  # target's place among its ties
        ranking = higher + equal[:place] + [target] + equal[place:]
        top = ranking[:k]
        hits = [j for j, item in enumerate(top) if item == target]
        rel = 1.0 if hits else 0.0
        totals["recall"] += rel  # one relevant item
        totals["precision"] += sum(1 for item in top if item == target) / k
        totals["ndcg"] += sum(1 / math.log2(j + 2) for j in hits)  # ideal DCG is 1
        totals["mrr"] += 1 / (hits[0] + 1) if hits else 0.0
        precisions = [sum(1 for x in top[:j + 1] if x == target) / (j + 1) for j in hits]
        totals["map"] += sum(precisions) / 1  # average precision over the 1 relevant item
    return {m: v / (len(equal) + 1) for m, v in totals.items()}


def test_metrics_match_reference_with_ties_and_batches():
    rng = random.Random(0)
    rows = [[float(rng.randint(0, 5)) for _ in range(30)] for _ in range(200)]  # many ties
    rows += [[1.0] * 30 for _ in range(10)]  # a constant model ranks at chance, not first
    targets = [rng.randrange(30) for _ in rows]
    total = {}
    for i in range(0, len(rows), 37):  # uneven batches must sum to the full-set value
        s = torch.tensor(rows[i:i + 37])
        t = torch.tensor(targets[i:i + 37])
        add_sums(total, metric_sums(target_ranks(s, t), ks=(1, 5, 10, 30)))
    got = finalize(total)
    for k in (1, 5, 10, 30):
        ref = [reference(r, t, k) for r, t in zip(rows, targets)]
        for m in ("precision", "recall", "ndcg", "map", "mrr"):
            assert abs(got[f"{m}@{k}"] - sum(x[m] for x in ref) / len(ref)) < 1e-12, (m, k)
    assert got["count"] == len(rows)


def test_constant_scores_score_at_chance():
    scores = torch.zeros(1000, 50)
    targets = torch.randint(0, 50, (1000,))
    got = finalize(metric_sums(target_ranks(scores, targets), ks=(10,)))
    assert abs(got["recall@10"] - 10 / 50) < 1e-12


def test_distinct_scores_without_ties():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3]])
    got = finalize(metric_sums(target_ranks(scores, torch.tensor([2])), ks=(1, 2)))
    assert got["recall@1"] == 0 and got["recall@2"] == 1 and got["precision@2"] == 0.5
    assert abs(got["ndcg@2"] - 1 / math.log2(3)) < 1e-12 and got["mrr@2"] == 0.5 == got["map@2"]
