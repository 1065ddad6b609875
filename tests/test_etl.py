import json
import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from rayrec.etl import EtlConfig, SessionWorkflow, run_etl
from rayrec.etl.io import to_seconds
from rayrec.schema import Schema


def read_all(data_dir, split=None):
    days = sorted(d for d in os.listdir(data_dir) if d.isdigit())
    splits = [split] if split else ["train", "valid", "test"]
    return pd.concat([pq.read_table(os.path.join(data_dir, d, f"{s}.parquet")).to_pandas()
                      for d in days for s in splits], ignore_index=True)


def reference_sessions(events: pd.DataFrame, wf: SessionWorkflow, max_len=20, min_len=2) -> dict:
    """Straightforward pandas: sort, drop consecutive repeats, keep last max_len, drop short."""
    df = events.copy()
    df["t"] = to_seconds(df["event_time"], "event_time")
    df["code"] = wf.encode(df["product_id"])
    df = df.sort_values(["user_session", "t", "code"], kind="stable")
    out = {}
    for key, g in df.groupby("user_session", sort=False):
        codes = g["code"].tolist()
        dedup = [c for i, c in enumerate(codes) if i == 0 or c != codes[i - 1]]
        if len(dedup) >= min_len:
            out[key] = dedup[-max_len:]
    return out


def test_layout_schema_and_workflow(etl_dir):
    for d in sorted(x for x in os.listdir(etl_dir) if x.isdigit()):
        assert sorted(os.listdir(os.path.join(etl_dir, d))) == ["test.parquet", "train.parquet", "valid.parquet"]
    schema = Schema.load(etl_dir)
    assert Schema.load(os.path.join(etl_dir, "schema.pbtxt")) == schema
    item = schema.item_id_column()
    wf = SessionWorkflow.load(os.path.join(etl_dir, "workflow"))
    assert item.cardinality == wf.cardinality
    assert not [f for f in os.listdir(os.path.join(etl_dir, "workflow")) if f.endswith((".pkl", ".pickle"))]


def test_sessions_equal_a_pandas_reference(synth_dir, etl_dir):
    events = pd.read_parquet(os.path.join(synth_dir, "events.parquet"))
    wf = SessionWorkflow.load(os.path.join(etl_dir, "workflow"))
    ref = reference_sessions(events, wf)
    got = read_all(etl_dir)
    assert len(got) == len(ref)
    for key, items in zip(got["user_session"], got["product_id-list"]):
        assert list(items) == ref[key]
    assert (got["product_id-list"].map(len) >= 2).all()
    # every day index matches the day of the session's first event
    first = events.assign(t=to_seconds(events["event_time"], "event_time")).groupby("user_session")["t"].min()
    expected = ((first[got["user_session"]].to_numpy() - wf.day0) // 86400 + 1).astype(int)
    assert (got["day_index"].to_numpy() == expected).all()


def test_online_transform_equals_batch(synth_dir, etl_dir):
    events = pd.read_parquet(os.path.join(synth_dir, "events.parquet"))
    wf = SessionWorkflow.load(os.path.join(etl_dir, "workflow"))
    got = read_all(etl_dir, "test").head(200)
    by_session = {k: g for k, g in events.groupby("user_session") if k in set(got["user_session"])}
    for key, items in zip(got["user_session"], got["product_id-list"]):
        g = by_session[key].sample(frac=1.0, random_state=0)  # order must not matter
        records = [{"product_id": int(p), "event_time": t} for p, t in zip(g["product_id"], g["event_time"])]
        assert wf.transform_session(records).tolist() == list(items)


def test_save_load_gives_identical_outputs(synth_dir, etl_dir, tmp_path):
    wf = SessionWorkflow.load(os.path.join(etl_dir, "workflow"))
    wf.save(str(tmp_path / "wf"))
    again = SessionWorkflow.load(str(tmp_path / "wf"))
    events = pd.read_parquet(os.path.join(synth_dir, "events.parquet")).head(5000)
    a, _ = wf.transform_partition(events)
    b, _ = again.transform_partition(events)
    assert a.equals(b)


def test_unknown_ids_go_to_the_oov_bucket(etl_dir):
    wf = SessionWorkflow.load(os.path.join(etl_dir, "workflow"))
    known = wf.decode([2])[0]
    codes = wf.transform_session([{"product_id": known, "event_time": 1}, {"product_id": 999999999999, "event_time": 2}])
    assert codes.tolist() == [2, 1]


def test_column_flags_read_a_yoochoose_style_tsv(tmp_path):
    rng = np.random.default_rng(0)
    n = 3000
    df = pd.DataFrame({"SessionId": rng.integers(0, 400, n), "ItemId": rng.integers(214_000_000, 214_000_050, n),
                       "Time": 1_396_000_000 + np.sort(rng.uniform(0, 3 * 86400, n))})
    path = tmp_path / "clicks.tsv"
    df.to_csv(path, sep="\t", index=False)
    cfg = EtlConfig(session_col="SessionId", item_col="ItemId", time_col="Time")
    report = run_etl([str(path)], str(tmp_path / "out"), cfg)
    assert report["events"] == n and len(report["sessions_by_day"]) >= 3
    wf = SessionWorkflow.load(str(tmp_path / "out" / "workflow"))
    assert wf.key_kind == "int" and isinstance(wf.decode([2])[0], int)


def test_missing_column_names_file_and_column_and_writes_nothing(synth_dir, tmp_path):
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"user_session": ["a"], "event_time": ["2019-10-01 00:00:00 UTC"]}).to_csv(bad, index=False)
    out = tmp_path / "out"
    with pytest.raises(ValueError) as e:
        run_etl([os.path.join(synth_dir, "events.parquet"), str(bad)], str(out), EtlConfig())
    assert str(bad) in str(e.value) and "product_id" in str(e.value)
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".out")]


def test_empty_input_is_an_error(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("event_time,product_id,user_session\n")
    with pytest.raises(ValueError, match="no events"):
        run_etl([str(empty)], str(tmp_path / "out"), EtlConfig())
    assert not (tmp_path / "out").exists()


def test_existing_output_is_not_overwritten_silently(etl_dir, synth_dir):
    with pytest.raises(FileExistsError):
        run_etl([os.path.join(synth_dir, "events.parquet")], etl_dir, EtlConfig())
    assert json.load(open(os.path.join(etl_dir, "report.json")))["events"] > 0
