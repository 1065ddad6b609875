"""Synthetic REES46-style e-commerce events with a known sequential process.

Sessions walk a first-order Markov chain over items: from the current item, with
probability ``follow`` go to one of a few planted successors (Dirichlet weights), else
draw from a long-tailed popularity distribution; a chain never stays on the same item.
Page refreshes then duplicate some events. Because the process is known, the
Bayes-optimal predictor of a session's last item is P(next | previous item), and its
expected Recall@k / NDCG@k is the ceiling any model can reach on this data.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

COLUMNS = ["event_time", "event_type", "product_id", "category_id", "category_code",
           "brand", "price", "user_id", "user_session"]
_CODES = ["electronics.smartphone", "electronics.audio.headphone", "appliances.kitchen.washer",
          "computers.notebook", "apparel.shoes", "furniture.living_room.sofa", "kids.toys",
          "construction.tools.drill", "auto.accessories.player", "sport.bicycle"]
_BRANDS = ["samsung", "apple", "xiaomi", "huawei", "lg", "sony", "bosch", "lenovo", "acer", "hp"]


@dataclass
class SynthConfig:
    events: int = 200_000
    days: int = 7
    items: int = 2_000
    seed: int = 0
    categories: int = 60
    popularity_exponent: float = 0.9   # Zipf exponent of item popularity
    successors: int = 4                # planted successors per item
    follow: float = 0.7                # probability of following a planted transition
    refresh: float = 0.1               # probability that an event is repeated (page refresh)
    mean_session_length: float = 5.0   # distinct items per session, before refreshes
    start_date: str = "2019-10-01"
    format: str = "parquet"            # parquet or csv
    ceiling: bool = True               # compute the Bayes ceiling (costs items x distinct items)


class Process:
    """The planted item process: popularity plus sparse successor transitions."""

    def __init__(self, cfg: SynthConfig, rng: np.random.Generator):
        n = cfg.items
        ranks = rng.permutation(n) + 1
        pop = ranks.astype(np.float64) ** -cfg.popularity_exponent
        self.pop = pop / pop.sum()
        self.pop_cdf = np.cumsum(self.pop)
        succ = np.empty((n, cfg.successors), dtype=np.int64)
        for i in range(n):  # distinct successors, never the item itself
            choice = rng.choice(n - 1, size=cfg.successors, replace=False)
            succ[i] = choice + (choice >= i)
        self.succ = succ
        w = rng.dirichlet(np.ones(cfg.successors), size=n)
        self.succ_cdf = np.cumsum(w, axis=1)
        self.succ_w = w
        self.follow = cfg.follow

    def first(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return np.minimum(np.searchsorted(self.pop_cdf, rng.random(size)), len(self.pop) - 1)

    def step(self, rng: np.random.Generator, cur: np.ndarray) -> np.ndarray:
        """Sample the next item for each current item, rejecting self-transitions."""
        nxt = cur.copy()
        todo = np.arange(len(cur))
        while len(todo):
            c = cur[todo]
            follow = rng.random(len(todo)) < self.follow
            k = (rng.random(len(todo))[:, None] > self.succ_cdf[c]).sum(axis=1)
            k = np.minimum(k, self.succ.shape[1] - 1)
            drawn = np.where(follow, self.succ[c, k], self.first(rng, len(todo)))
            nxt[todo] = drawn
            todo = todo[drawn == c]
        return nxt

    def next_distribution(self, cur: int) -> np.ndarray:
        p = (1 - self.follow) * self.pop.copy()
        np.add.at(p, self.succ[cur], self.follow * self.succ_w[cur])
        p[cur] = 0.0  # rejection of self-transitions renormalises the rest
        return p / p.sum()


def ceiling(process: Process, prev_items: np.ndarray, ks=(10, 20)) -> dict[str, float]:
    """Expected Recall@k and NDCG@k of the Bayes-optimal ranking, averaged over sessions."""
    if len(prev_items) == 0:
        return {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg")}
    uniq, counts = np.unique(prev_items, return_counts=True)
    kmax = max(ks)
    discount = 1.0 / np.log2(np.arange(2, kmax + 2))
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg")}
    for item, count in zip(uniq, counts):
        p = process.next_distribution(int(item))
        top = np.sort(np.partition(p, -kmax)[-kmax:])[::-1]
        for k in ks:
            sums[f"recall@{k}"] += count * top[:k].sum()
            sums[f"ndcg@{k}"] += count * (top[:k] * discount[:k]).sum()
    return {key: float(v / counts.sum()) for key, v in sums.items()}


def generate(cfg: SynthConfig) -> tuple[pa.Table, dict]:
    """Return the events table (REES46 columns, time-ordered) and the ceiling report."""
    rng = np.random.default_rng(cfg.seed)
    proc = Process(cfg, rng)
    n_sessions = max(1, int(cfg.events / (cfg.mean_session_length * (1 + cfg.refresh))))
    # Geometric lengths >= 1: about 1/mean of the sessions have one event (the ETL drops them).
    lengths = rng.geometric(1.0 / cfg.mean_session_length, size=n_sessions)
    max_len = int(lengths.max())
    items = np.zeros((n_sessions, max_len), dtype=np.int64)
    items[:, 0] = proc.first(rng, n_sessions)
    for t in range(1, max_len):
        active = lengths > t
        items[active, t] = proc.step(rng, items[active, t - 1])

    mask = np.arange(max_len)[None, :] < lengths[:, None]
    sess = np.repeat(np.arange(n_sessions), lengths)
    item = items[mask]
    # Page refreshes: repeat an event in place a few seconds later.
    reps = 1 + (rng.random(len(item)) < cfg.refresh)
    sess, item = np.repeat(sess, reps), np.repeat(item, reps)
    counts = np.bincount(sess, minlength=n_sessions)       # every session has >= 1 event
    first_idx = np.r_[0, np.cumsum(counts)[:-1]]
    day = rng.integers(0, cfg.days, size=n_sessions)
    start = day * 86400 + rng.integers(0, 86400 - 3600, size=n_sessions)
    gaps = rng.exponential(45.0, size=len(sess)).astype(np.int64) + 1
    gaps[first_idx] = 0
    csum = np.cumsum(gaps)
    offset = csum - np.repeat(csum[first_idx], counts)   # seconds since the session began
    t0 = np.datetime64(cfg.start_date, "s").astype(np.int64)
    seconds = t0 + start[sess] + offset

    # Per-item attributes: category, code and brand with nulls, price.
    n_items = cfg.items
    product_ids = np.sort(rng.choice(np.arange(1_000_000, 1_000_000 + 50 * n_items), n_items, replace=False))
    item_cat = rng.integers(0, cfg.categories, size=n_items)
    cat_ids = 2_053_013_552_000_000_000 + rng.choice(10**9, size=cfg.categories, replace=False)
    cat_code = np.array([None if c % 4 == 3 else _CODES[c % len(_CODES)] for c in range(cfg.categories)], dtype=object)
    brand = np.array([None if rng.random() < 0.15 else _BRANDS[rng.integers(len(_BRANDS))] for _ in range(n_items)],
                     dtype=object)
    price = np.round(rng.lognormal(4.0, 1.0, size=n_items), 2)
    event_type = np.array(["view", "cart", "purchase"])[
        np.searchsorted([0.9, 0.97], rng.random(len(sess)))]
    users = rng.integers(500_000_000, 600_000_000, size=n_sessions)
    tokens = rng.integers(0, 2**63 - 1, size=(n_sessions, 2), dtype=np.int64)
    session_keys = np.array([f"{a:016x}-{b:016x}" for a, b in tokens.astype(np.uint64)], dtype=object)

    order = np.lexsort((offset, seconds))
    ts = pa.array(seconds[order], type=pa.timestamp("s", tz="UTC"))
    table = pa.table({
        "event_time": pc.strftime(ts, format="%Y-%m-%d %H:%M:%S UTC"),
        "event_type": event_type[order],
        "product_id": product_ids[item[order]],
        "category_id": cat_ids[item_cat[item[order]]],
        "category_code": pa.array(cat_code[item_cat[item[order]]], type=pa.string()),
        "brand": pa.array(brand[item[order]], type=pa.string()),
        "price": price[item[order]],
        "user_id": users[sess[order]],
        "user_session": pa.array(session_keys[sess[order]], type=pa.string()),
    })

    # The ceiling is over sessions the ETL keeps (>= 2 distinct consecutive items); the
    # chain never repeats an item back to back, so that is every session of length >= 2.
    long = lengths >= 2
    prev = items[long, lengths[long] - 2]
    report = {"ceiling": ceiling(proc, prev) if cfg.ceiling else None, "by_day": {},
              "sessions": int(n_sessions), "events": int(len(sess)), "config": asdict(cfg)}
    for d in range(cfg.days if cfg.ceiling else 0):
        sel = long & (day == d)
        report["by_day"][str(d + 1)] = ceiling(proc, items[sel, lengths[sel] - 2])
    return table, report


def write(cfg: SynthConfig, out_dir: str) -> dict:
    """Write events.<format> and ceiling.json into out_dir; return the report."""
    table, report = generate(cfg)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"events.{cfg.format}")
    tmp = path + ".tmp"
    if cfg.format == "csv":
        pacsv.write_csv(table, tmp)
    elif cfg.format == "parquet":
        pq.write_table(table, tmp, row_group_size=1_000_000)
    else:
        raise ValueError(f"format must be parquet or csv, got {cfg.format!r}")
    os.replace(tmp, path)
    report["path"] = path
    with open(os.path.join(out_dir, "ceiling.json.tmp"), "w") as f:
        json.dump(report, f, indent=2)
    os.replace(os.path.join(out_dir, "ceiling.json.tmp"), os.path.join(out_dir, "ceiling.json"))
    return report
