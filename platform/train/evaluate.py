"""Evaluation: the model's and a most-popular baseline's ranking metrics on a split."""
from __future__ import annotations

import numpy as np
import torch

from rayrec.metrics import DEFAULT_KS, add_sums, metric_sums, target_ranks
from rayrec.models.session_model import N_SPECIAL, SessionModel
from rayrec.train.data import eval_examples


def model_metric_sums(model: SessionModel, items: np.ndarray, batch_size: int = 512, ks=DEFAULT_KS) -> dict:
    inputs, targets = eval_examples(items)
    sums: dict[str, float] = {"count": 0.0}
    model.eval()
    for i in range(0, len(inputs), batch_size):
        x = torch.from_numpy(inputs[i:i + batch_size])
        y = torch.from_numpy(targets[i:i + batch_size])
        add_sums(sums, metric_sums(target_ranks(model.next_item_scores(x), y), ks))
    return sums


def item_counts(train_items: list[np.ndarray], n_items: int) -> np.ndarray:
    counts = np.zeros(n_items, dtype=np.float64)
    for items in train_items:
        counts += np.bincount(items[items > 0].ravel(), minlength=n_items)[:n_items]
    return counts


def popularity_metric_sums(counts: np.ndarray, items: np.ndarray, ks=DEFAULT_KS) -> dict:
    """Every session gets the same list: items by training frequency."""
    _, targets = eval_examples(items)
    scores = counts.copy()
    scores[:N_SPECIAL] = -1.0
    ordered = np.sort(scores)
    ranks = len(ordered) - np.searchsorted(ordered, scores[targets], side="right")
    return metric_sums(torch.from_numpy(ranks), ks)
