"""V-SkNN (Ludewig & Jannach, "Evaluation of session-based recommendation algorithms",
2018), written here from the paper's description, and the prediction points of the
standard protocol, so that the sweep benchmark scores rayrec and the baselines on
exactly the same clicks.

V-SkNN for a session prefix s: the candidate neighbours are the training sessions that
share an item with s, of which the `sample` most recent are kept; each is scored by a
similarity that weights s's items by their position (the last click counts most: linear
decay), normalised as a cosine; the `k` most similar neighbours vote for each of their
items with their similarity.
"""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np


def read_sessions(path: str, drop_repeats: bool = False) -> list[tuple[float, list]]:
    """(start time, item ids in time order) per session of a SessionId/ItemId/Time TSV."""
    import pyarrow.csv as pcsv

    t = pcsv.read_csv(path, parse_options=pcsv.ParseOptions(delimiter="\t")).to_pandas()
    t = t.sort_values(["SessionId", "Time"], kind="stable")
    out = []
    for _, g in t.groupby("SessionId", sort=False):
        items = g["ItemId"].tolist()
        if drop_repeats:
            items = [x for i, x in enumerate(items) if i == 0 or x != items[i - 1]]
        out.append((float(g["Time"].iloc[0]), items))
    return out


def prediction_points(sessions: list[tuple[float, list]]) -> list[tuple[list, object]]:
    """Every next click from the clicks before it: (prefix, target)."""
    return [(items[:t], items[t]) for _, items in sessions for t in range(1, len(items))]


class VSkNN:
    def __init__(self, train: list[tuple[float, list]], k: int = 100, sample: int = 500, decay: str = "linear"):
        self.k, self.sample, self.decay = k, sample, decay
        self.items = [set(items) for _, items in train]
        self.times = np.array([t for t, _ in train])
        self.by_item: dict = defaultdict(list)
        for sid, items in enumerate(self.items):
            for item in items:
                self.by_item[item].append(sid)
        counts: dict = defaultdict(int)
        for _, items in train:
            for item in items:
                counts[item] += 1
        self.popular = sorted(counts, key=lambda i: -counts[i])

    def weights(self, prefix: list) -> dict:
        n = len(prefix)
        w: dict = {}
        for pos, item in enumerate(prefix, 1):   # later positions overwrite: an item's weight is its latest
            w[item] = {"linear": pos / n, "quadratic": (pos / n) ** 2, "log": 1 / math.log2(n - pos + 2),
                       "same": 1.0}[self.decay]
        return w

    def scores(self, prefix: list) -> dict:
        w = self.weights(prefix)
        candidates = set()
        for item in w:
            candidates.update(self.by_item.get(item, ()))
        if len(candidates) > self.sample:
            c = np.fromiter(candidates, dtype=np.int64)
            candidates = c[np.argsort(-self.times[c], kind="stable")[:self.sample]].tolist()
        norm = math.sqrt(len(w))
        sims = []
        for sid in candidates:
            other = self.items[sid]
            overlap = sum(v for item, v in w.items() if item in other)
            if overlap > 0:
                sims.append((overlap / (norm * math.sqrt(len(other))), sid))
        sims.sort(key=lambda x: -x[0])
        out: dict = defaultdict(float)
        for sim, sid in sims[:self.k]:
            for item in self.items[sid]:
                out[item] += sim
        return out

    def rank_of(self, prefix: list, target, cutoff: int = 20) -> int | None:
        """1-based rank of `target` among all items (ties broken by popularity), None beyond `cutoff`."""
        scores = self.scores(prefix)
        ranked = sorted(scores, key=lambda i: -scores[i])[:cutoff]
        if len(ranked) < cutoff:   # fill with the most popular items not yet ranked
            seen = set(ranked)
            ranked += [i for i in self.popular[:2 * cutoff] if i not in seen][:cutoff - len(ranked)]
        return ranked.index(target) + 1 if target in ranked else None


def hit_and_mrr(ranks: list[int | None], cutoff: int = 20) -> dict:
    n = len(ranks)
    return {"HR@20": sum(r is not None and r <= cutoff for r in ranks) / n,
            "MRR@20": sum(1.0 / r for r in ranks if r is not None and r <= cutoff) / n, "points": n}
