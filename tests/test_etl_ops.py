"""Every op against a straightforward pandas reference on random data with nulls and
values unseen at fit. Each op is fitted on two partitions (so `combine` is exercised) and
applied to a third."""
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from rayrec.etl.columns import Ragged, to_arrow
from rayrec.etl.inputs import frame_from_table
from rayrec.etl.ops_encode import Categorify
from rayrec.etl.ops_numeric import (Apply, Bucketize, Clip, FillMissing, JoinGroupby, LogOp, Normalize,
                                    RelativeDifference, Rename)
from rayrec.etl.op import register_function
from rayrec.etl.ops_session import DropConsecutiveRepeats, Filter, Groupby, ListSlice, Select
from rayrec.etl.ops_time import Cyclic, DayIndex, DifferenceLag, ItemRecency

SEEDS = range(6)


def random_events(seed: int, n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "session": rng.integers(0, n // 5, n),
        "t": 1_569_888_000 + rng.integers(0, 5 * 86400, n).astype(float),
        "item": rng.integers(0, 40, n),
        "brand": rng.choice(["a", "b", "c", "d", "e", "f"], n).astype(object),
        "price": rng.lognormal(3, 1, n),
        "cat": rng.integers(0, 8, n).astype(float),
    })
    df.loc[rng.random(n) < 0.1, "brand"] = None
    df.loc[rng.random(n) < 0.1, "price"] = np.nan
    df.loc[rng.random(n) < 0.05, "cat"] = np.nan
    df.loc[rng.random(n) < 0.05, "item"] = 1000 + seed   # rare values
    return df.sort_values(["session", "t"], kind="stable").reset_index(drop=True)


def frame(df: pd.DataFrame) -> dict:
    return frame_from_table(pa.Table.from_pandas(df, preserve_index=False))


def fitted(op, df: pd.DataFrame):
    """Fit on two partitions split by session (as the pipeline's buckets are)."""
    a, b = df[df["session"] % 2 == 0], df[df["session"] % 2 == 1]
    op.combine([op.partial(frame(a)), op.partial(frame(b))])
    return op


def values(col) -> list:
    if isinstance(col, Ragged):
        v = values(col.values)
        return [v[s:e] for s, e in zip(col.offsets[:-1], col.offsets[1:])]
    return to_arrow(col).to_pylist()


def close(a, b) -> bool:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return a.shape == b.shape and np.allclose(a, b, equal_nan=True, rtol=1e-9, atol=1e-9)


# --- Categorify ---------------------------------------------------------------------------
def reference_codes(fit_values: pd.Series, apply_values: pd.Series, start: int, threshold: int, max_size):
    counts = fit_values.dropna().value_counts()
    counts = counts[counts >= threshold]
    order = sorted(counts.index, key=lambda v: (-counts[v], v))[:max_size]
    mapping = {v: start + 2 + i for i, v in enumerate(order)}
    return [start + 1 if pd.isna(v) else mapping.get(v, start) for v in apply_values]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("column", ["item", "brand"])
def test_categorify(seed, column):
    df, new = random_events(seed), random_events(seed + 100)
    start, threshold, max_size = 1 + seed % 3, 1 + seed % 2, [None, 5][seed % 2]
    op = fitted(Categorify([column], start_index=start, freq_threshold=threshold, max_size=max_size), df)
    got = op.transform(frame(new))[column]
    assert got.tolist() == reference_codes(df[column], new[column], start, threshold, max_size)
    counts = df[column].value_counts()
    assert op.cardinality(column) == start + 2 + min((counts >= threshold).sum(), max_size or len(counts))


@pytest.mark.parametrize("seed", SEEDS)
def test_categorify_shared_vocabulary_over_scalar_and_list_columns(seed):
    df = random_events(seed)
    df["other"] = np.random.default_rng(seed).integers(0, 60, len(df))
    grouped = Groupby("session", "t", {"other": ["list"]}).transform(frame(df))
    f = {**frame(df.drop_duplicates("session")), "other-list": grouped["other-list"]}
    op = Categorify(["item", "other-list"], vocab="ids")
    op.combine([op.partial(f)])
    out = op.transform(f)
    fit_values = pd.concat([df.drop_duplicates("session")["item"], df["other"]])
    assert out["item"].tolist() == reference_codes(fit_values, df.drop_duplicates("session")["item"], 1, 1, None)
    assert isinstance(out["other-list"], Ragged)
    assert out["other-list"].values.tolist() == reference_codes(fit_values, pd.Series(grouped["other-list"].values),
                                                                1, 1, None)


def test_categorify_online_lookup_equals_batch_lookup():
    df = random_events(0, 2000)
    op = fitted(Categorify(["brand", "item"]), df)
    batch = op.transform(frame(df))                   # hash join
    for lo in range(0, 2000, 37):                      # small slices take the dict path
        part = op.transform(frame(df.iloc[lo:lo + 37]))
        assert part["brand"].tolist() == batch["brand"][lo:lo + 37].tolist()
        assert part["item"].tolist() == batch["item"][lo:lo + 37].tolist()
    assert op.decode(batch["item"][:5], "item") == df["item"][:5].tolist()


# --- numeric ------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
def test_normalize_log_clip_fill_bucketize(seed):
    df, new = random_events(seed), random_events(seed + 50)
    op = fitted(Normalize(["price"], out=["z"]), df)
    mean, std = df["price"].mean(), df["price"].std(ddof=0)
    assert close(op.transform(frame(new))["z"], (new["price"] - mean) / std)
    assert close(LogOp(["price"]).transform(frame(new))["price"], np.log1p(new["price"]))
    assert close(Clip(["price"], min=5, max=50).transform(frame(new))["price"], new["price"].clip(5, 50))
    assert close(FillMissing(["price"], value=-1).transform(frame(new))["price"], new["price"].fillna(-1))
    b = [5.0, 20.0, 60.0]
    ref = pd.cut(new["price"], [-np.inf] + b + [np.inf], right=False, labels=False).fillna(len(b))
    assert Bucketize(["price"], b).transform(frame(new))["price"].tolist() == ref.astype(int).tolist()


@pytest.mark.parametrize("seed", SEEDS)
def test_join_groupby_and_relative_difference(seed):
    df, new = random_events(seed), random_events(seed + 7)
    new.loc[new.index[:5], "cat"] = 99.0  # groups never seen at fit
    op = fitted(JoinGroupby("cat", ["price"], stats=["count", "mean", "sum", "min", "max", "std"]), df)
    out = op.transform(frame(new))
    g = df.groupby("cat")["price"]
    stats = pd.DataFrame({"cat_count": df.groupby("cat").size(), "cat_price_mean": g.mean(),
                          "cat_price_sum": g.sum(), "cat_price_min": g.min(), "cat_price_max": g.max(),
                          "cat_price_std": g.std(ddof=0)})
    ref = new[["cat"]].merge(stats, left_on="cat", right_index=True, how="left")
    ref["cat_count"] = ref["cat_count"].fillna(0)
    for c in stats.columns:
        assert close(out[c], ref[c]), c
    rel = RelativeDifference("price", "cat_price_mean", out="rel").transform(out)["rel"]
    m = ref["cat_price_mean"]
    assert close(rel, np.where(m > 0, (new["price"] - m) / (m + 1e-5), 0.0))


def test_apply_calls_a_registered_function_by_name():
    register_function("double_price")(lambda price: price * 2)
    df = random_events(0)
    assert close(Apply("double_price", ["price"], out="p2").transform(frame(df))["p2"], df["price"] * 2)
    with pytest.raises(ValueError, match="not registered"):
        Apply("nobody_registered_this", ["price"], out="x").transform(frame(df))


# --- time ---------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
def test_temporal_features(seed):
    df, new = random_events(seed), random_events(seed + 3)
    new.loc[new.index[:4], "item"] = 5555                  # never seen: age 0
    dt = pd.to_datetime(new["t"], unit="s")
    out = Cyclic("t", parts=["weekday", "hour"]).transform(frame(new))
    assert close(out["t_weekday_sin"], np.sin(2 * np.pi * dt.dt.day_of_week / 7))
    assert close(out["t_hour_cos"], np.cos(2 * np.pi * dt.dt.hour / 24))
    day = fitted(DayIndex("t"), df).transform(frame(new))["day_index"]
    first_day = pd.to_datetime(df["t"], unit="s").min().normalize()
    assert day.tolist() == ((dt.dt.normalize() - first_day).dt.days + 1).tolist()
    age = fitted(ItemRecency("item", "t", out="age"), df).transform(frame(new))["age"]
    first = df.groupby("item")["t"].min()
    ref = ((new["t"] - new["item"].map(first).fillna(new["t"])) / 86400).clip(lower=0)
    assert close(age, ref)
    lag = DifferenceLag("t", by="session", out="dt").transform(frame(new))["dt"]
    assert close(lag, new.groupby("session")["t"].diff())


# --- session ops --------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
def test_drop_consecutive_repeats(seed):
    df = random_events(seed)
    df["item"] = df["item"] % 3                              # many repeats
    out = DropConsecutiveRepeats("session", "item").transform(frame(df))
    repeat = (df["session"] == df["session"].shift()) & (df["item"] == df["item"].shift())
    assert out["item"].tolist() == df.loc[~repeat, "item"].tolist()
    assert out["t"].tolist() == df.loc[~repeat, "t"].tolist()


@pytest.mark.parametrize("seed", SEEDS)
def test_groupby_aggregations(seed):
    df = random_events(seed)
    aggs = {"item": ["list", "count", "first", "last"], "price": ["min", "max", "mean", "list"], "brand": ["list"]}
    out = Groupby("session", "t", aggs).transform(frame(df))
    g = df.groupby("session", sort=False)
    assert out["session"].tolist() == list(g.groups)
    assert values(out["item-list"]) == [list(x) for x in g["item"].agg(list)]
    assert values(out["brand-list"]) == [[None if pd.isna(v) else v for v in x] for x in g["brand"].agg(list)]
    assert out["item-count"].tolist() == g.size().tolist()
    assert out["item-first"].tolist() == g["item"].nth(0).tolist()
    assert out["item-last"].tolist() == g["item"].nth(-1).tolist()
    for a in ("min", "max", "mean"):
        assert close(out[f"price-{a}"], g["price"].agg(a)), a


@pytest.mark.parametrize("seed", SEEDS)
def test_list_slice(seed):
    rng = np.random.default_rng(seed)
    lists = [list(rng.integers(1, 100, rng.integers(0, 9))) for _ in range(50)]
    offsets = np.r_[0, np.cumsum([len(x) for x in lists])]
    col = Ragged(np.concatenate([np.asarray(x, dtype=np.int64) for x in lists]), offsets)
    for start, end, pad in [(0, 3, None), (-4, None, None), (1, -1, None), (-3, -1, None), (2, None, 6), (0, 20, 20)]:
        got = values(ListSlice(["x"], start=start, end=end, pad_to=pad).transform({"x": col})["x"])
        ref = [x[start:end] for x in lists]
        if pad is not None:
            ref = [r[:pad] + [0] * (pad - len(r[:pad])) for r in ref]
        assert got == ref, (start, end, pad)


@pytest.mark.parametrize("seed", SEEDS)
def test_filter_rename_select(seed):
    df = random_events(seed)
    f = frame(df)
    for cmp, ref in [(">=", df["price"] >= 20), ("<", df["price"] < 20), ("!=", df["price"] != df["price"].iloc[0])]:
        assert Filter("price", cmp, float(20 if cmp != "!=" else df["price"].iloc[0])).transform(f)["item"].tolist() \
            == df.loc[ref, "item"].tolist()
    assert Filter("brand", "notnull").transform(f)["item"].tolist() == df.loc[df["brand"].notna(), "item"].tolist()
    renamed = Rename({"price": "cost"}).transform(f)
    assert list(renamed) == [("cost" if c == "price" else c) for c in df.columns]
    assert list(Select(["t", "item"]).transform(f)) == ["t", "item"]


def test_join_groupby_std_is_stable_for_large_offsets():
    """Values near 1e9 with a spread of 1: E[x^2] - mean^2 loses every digit there; the
    pooled merge over several partitions keeps the standard deviation exact."""
    rng = np.random.default_rng(3)
    x = 1e9 + rng.normal(0, 1, 6000)
    df = pd.DataFrame({"cat": rng.integers(0, 3, 6000).astype(float), "price": x})
    op = JoinGroupby("cat", ["price"], stats=["std", "mean"])
    op.combine([op.partial(frame(df.iloc[i::4])) for i in range(4)])
    out = op.transform(frame(df))
    ref = df.groupby("cat")["price"].transform(lambda v: v.std(ddof=0))
    assert np.allclose(out["cat_price_std"], ref, rtol=1e-6)
