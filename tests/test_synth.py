import json
import os

import numpy as np
import pyarrow.parquet as pq

from rayrec.synth import COLUMNS, Process, SynthConfig, ceiling, generate


def test_events_have_rees46_columns_nulls_and_refreshes(synth_dir):
    t = pq.read_table(os.path.join(synth_dir, "events.parquet"))
    assert t.column_names == COLUMNS
    assert t["category_code"].null_count > 0 and t["brand"].null_count > 0
    df = t.to_pandas().sort_values(["user_session", "event_time"], kind="stable")
    same = (df["user_session"].values[1:] == df["user_session"].values[:-1]) & \
        (df["product_id"].values[1:] == df["product_id"].values[:-1])
    assert same.mean() > 0.05  # page refreshes repeat events
    counts = df["product_id"].value_counts().to_numpy()
    assert counts[:10].sum() > 5 * counts[-100:].sum() / 10  # long tail
    report = json.load(open(os.path.join(synth_dir, "ceiling.json")))
    assert 0.3 < report["ceiling"]["recall@20"] < 1
    assert set(report["by_day"]) == {"1", "2", "3", "4"}


def test_ceiling_equals_the_bayes_predictor_measured_on_samples():
    cfg = SynthConfig(items=200)
    rng = np.random.default_rng(5)
    proc = Process(cfg, rng)
    prev = proc.first(rng, 20_000)
    nxt = proc.step(rng, prev)
    assert not (nxt == prev).any()
    hits = [np.argsort(-proc.next_distribution(int(c)), kind="stable")[:20] for c in prev[:4000]]
    empirical = np.mean([n in h for n, h in zip(nxt[:4000], hits)])
    assert abs(ceiling(proc, prev[:4000])["recall@20"] - empirical) < 0.03


def test_generate_is_deterministic():
    a, _ = generate(SynthConfig(events=2000, items=50, seed=3))
    b, _ = generate(SynthConfig(events=2000, items=50, seed=3))
    assert a.equals(b)
