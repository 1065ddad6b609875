"""The Dask pipeline end to end: layout, equality with pandas, bad input, atomicity."""
import json
import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import etl

from rayrec.etl import EtlConfig, InputError, Workflow
from rayrec.schema import Schema


def read_all(data_dir, split=None):
    days = sorted(d for d in os.listdir(data_dir) if d.isdigit())
    splits = [split] if split else ["train", "valid", "test"]
    return pd.concat([pq.read_table(os.path.join(data_dir, d, f"{s}.parquet")).to_pandas()
                      for d in days for s in splits], ignore_index=True)


def seconds(text: pd.Series) -> pd.Series:
    t = pd.to_datetime(text.str.replace(" UTC", ""), utc=True)
    return (t - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)


def reference_sessions(events: pd.DataFrame, vocab: dict, max_len=20, min_len=2) -> dict:
    """Straightforward pandas: stable sort by (session, time), drop consecutive repeats,
    encode (OOV 1, from 3), keep the last max_len, drop short sessions."""
    df = events.copy()
    df["t"] = seconds(df["event_time"])
    df = df[df["user_session"].notna()].sort_values(["user_session", "t"], kind="stable")
    out = {}
    for key, g in df.groupby("user_session", sort=False):
        items = g["product_id"].tolist()
        dedup = [vocab.get(c, 1) for i, c in enumerate(items) if i == 0 or c != items[i - 1]]
        if len(dedup) >= min_len:
            out[key] = dedup[-max_len:]
    return out


def test_layout_schema_and_workflow(etl_dir):
    for d in sorted(x for x in os.listdir(etl_dir) if x.isdigit()):
        assert sorted(os.listdir(os.path.join(etl_dir, d))) == ["test.parquet", "train.parquet", "valid.parquet"]
    schema = Schema.load(etl_dir)
    assert Schema.load(os.path.join(etl_dir, "schema.pbtxt")) == schema
    item = schema.item_id_column()
    assert item.value_count_max == 20 and item.properties["first_code"] == 3
    wf = Workflow.load(os.path.join(etl_dir, "workflow"))
    assert item.cardinality == wf.categorify_for("product_id").cardinality("product_id")
    assert not [f for f in os.listdir(os.path.join(etl_dir, "workflow")) if not f.endswith((".json", ".parquet"))]
    assert pq.read_schema(os.path.join(etl_dir, "1", "train.parquet")).names == schema.names


def test_sessions_equal_a_pandas_reference(synth_dir, etl_dir):
    events = pd.read_parquet(os.path.join(synth_dir, "events.parquet"))
    wf = Workflow.load(os.path.join(etl_dir, "workflow"))
    known = wf.categorify_for("product_id")._state["product_id"].column("value").to_pylist()
    ref = reference_sessions(events, {v: 3 + i for i, v in enumerate(known)})
    got = read_all(etl_dir)
    assert len(got) == len(ref) and got["user_session"].is_unique
    for key, items in zip(got["user_session"], got["product_id-list"]):
        assert list(items) == ref[key]
    first = seconds(events["event_time"]).groupby(events["user_session"]).min()
    expected = (first[got["user_session"]].to_numpy() // 86400 - first.min() // 86400 + 1).astype(int)
    assert (got["day_index"].to_numpy() == expected).all()


def test_report_counts_every_dropped_row(synth_dir, tmp_path):
    events = pd.read_parquet(os.path.join(synth_dir, "events.parquet"))
    events.loc[events.sample(37, random_state=0).index, "user_session"] = None
    path = tmp_path / "events.parquet"
    events.to_parquet(path)
    report = etl([str(path)], tmp_path / "out")
    assert report["events"] == len(events) and report["events_without_session"] == 37
    removed = report["rows_removed_by_op"]
    assert set(removed) == {"00 DropConsecutiveRepeats", "05 Filter"}
    assert report["sessions"] == len(read_all(str(tmp_path / "out")))
    assert removed["05 Filter"] == events["user_session"].nunique() - report["sessions"]
    with_session = events[events["user_session"].notna()].sort_values(["user_session", "event_time"], kind="stable")
    repeat = (with_session["user_session"] == with_session["user_session"].shift()) & \
        (with_session["product_id"] == with_session["product_id"].shift())
    assert removed["00 DropConsecutiveRepeats"] == int(repeat.sum())
    assert json.load(open(tmp_path / "out" / "report.json")) == report


def test_time_split_puts_each_days_latest_sessions_in_test(synth_dir, tmp_path):
    cfg = EtlConfig(split="time")
    etl([os.path.join(synth_dir, "events.parquet")], tmp_path / "out", cfg)
    for d in ("1", "2"):
        parts = {s: pq.read_table(tmp_path / "out" / d / f"{s}.parquet").column("event_time-first").to_numpy()
                 for s in ("train", "valid", "test")}
        assert parts["train"].max() <= parts["valid"].min() <= parts["valid"].max() <= parts["test"].min()
        n = sum(len(v) for v in parts.values())
        assert abs(len(parts["test"]) / n - 0.1) < 0.02


def test_transform_with_a_fitted_workflow_reuses_its_vocabulary(synth_dir, etl_dir, tmp_path):
    wf = Workflow.load(os.path.join(etl_dir, "workflow"))
    etl([os.path.join(synth_dir, "events.parquet")], tmp_path / "again", workflow=wf, fitted=True)
    a, b = read_all(etl_dir), read_all(str(tmp_path / "again"))
    pd.testing.assert_frame_equal(a.sort_values("user_session").reset_index(drop=True),
                                  b.sort_values("user_session").reset_index(drop=True))


def test_csv_input_in_several_pieces_matches_parquet(synth_dir, etl_dir, tmp_path):
    csv = tmp_path / "events.csv"
    pd.read_parquet(os.path.join(synth_dir, "events.parquet")).to_csv(csv, index=False)
    report = etl([str(csv)], tmp_path / "out", EtlConfig(blocksize="256KB"))
    assert report["pieces"] > 4
    a, b = read_all(etl_dir), read_all(str(tmp_path / "out"))
    assert sorted(map(tuple, a["product_id-list"])) == sorted(map(tuple, b["product_id-list"]))


def test_column_flags_read_a_yoochoose_style_tsv(tmp_path):
    rng = np.random.default_rng(0)
    n = 3000
    df = pd.DataFrame({"SessionId": rng.integers(0, 400, n), "ItemId": rng.integers(214_000_000, 214_000_050, n),
                       "Time": 1_396_000_000 + np.sort(rng.uniform(0, 3 * 86400, n))})
    path = tmp_path / "clicks.tsv"
    df.to_csv(path, sep="\t", index=False)
    cfg = EtlConfig(session_col="SessionId", item_col="ItemId", time_col="Time")
    report = etl([str(path)], tmp_path / "out", cfg)
    assert report["events"] == n and len(report["sessions_by_day"]) >= 3
    wf = Workflow.load(str(tmp_path / "out" / "workflow"))
    assert isinstance(wf.categorify_for("ItemId").decode([3], "ItemId")[0], int)


# --- bad input: an error naming file, column and row; nothing left behind -------------------
def _nothing_written(tmp_path, name="out"):
    return not (tmp_path / name).exists() and not [p for p in os.listdir(tmp_path) if p.startswith(f".{name}")]


def test_missing_column_names_file_and_column(synth_dir, tmp_path):
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"user_session": ["a"], "event_time": ["2019-10-01 00:00:00 UTC"]}).to_csv(bad, index=False)
    with pytest.raises(InputError) as e:
        etl([os.path.join(synth_dir, "events.parquet"), str(bad)], tmp_path / "out")
    assert str(bad) in str(e.value) and "product_id" in str(e.value)
    assert _nothing_written(tmp_path)


def _csv_with(tmp_path, column, row, value, rows=20_000):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"user_session": rng.integers(0, 3000, rows).astype(str),
                       "product_id": rng.integers(0, 100, rows),
                       "event_time": pd.Timestamp("2019-10-01") + pd.to_timedelta(rng.integers(0, 86400 * 3, rows), "s"),
                       "price": rng.uniform(1, 100, rows).round(2)})
    df["event_time"] = df["event_time"].dt.strftime("%Y-%m-%d %H:%M:%S UTC")
    df = df.astype({column: object})
    df.loc[row, column] = value
    path = tmp_path / "events.csv"
    df.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("row", [5, 17_000])   # in the first piece and in a later one
def test_unparseable_time_names_file_column_and_row(tmp_path, row):
    path = _csv_with(tmp_path, "event_time", row, "yesterday at noon")
    with pytest.raises(InputError) as e:
        etl([str(path)], tmp_path / "out", EtlConfig(blocksize="64KB"))
    msg = str(e.value)
    assert str(path) in msg and "'event_time'" in msg and f"row {row}" in msg and "yesterday" in msg
    assert _nothing_written(tmp_path)


def test_non_numeric_value_in_numeric_column(tmp_path):
    from rayrec.etl import InputSpec
    from rayrec.etl.ops_numeric import LogOp
    from rayrec.etl.ops_session import Groupby
    from rayrec.etl.ops_time import DayIndex

    path = _csv_with(tmp_path, "price", 12_345, "twelve")
    wf = Workflow([LogOp(["price"]), Groupby(by="user_session", sort="event_time",
                                             aggs={"price": ["list"], "event_time": ["first"]}),
                   DayIndex("event_time-first")],
                  InputSpec(session="user_session", time="event_time", numeric=["price"]))
    with pytest.raises(InputError) as e:
        etl([str(path)], tmp_path / "out", EtlConfig(blocksize="64KB"), workflow=wf)
    msg = str(e.value)
    assert str(path) in msg and "'price'" in msg and "row 12345" in msg and "twelve" in msg
    assert _nothing_written(tmp_path)


def test_data_unlike_the_fitted_workflow_is_refused_with_the_differences(etl_dir, tmp_path):
    df = pd.DataFrame({"user_session": ["a", "a"], "product_id": ["x1", "x2"],
                       "event_time": ["2019-10-01 00:00:00 UTC"] * 2})
    path = tmp_path / "other.parquet"
    df.to_parquet(path)
    wf = Workflow.load(os.path.join(etl_dir, "workflow"))
    with pytest.raises(InputError) as e:
        etl([str(path)], tmp_path / "out", workflow=wf, fitted=True)
    assert "'product_id' is string, fitted as int64" in str(e.value) and str(path) in str(e.value)
    assert _nothing_written(tmp_path)


def test_empty_input_is_an_error(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("event_time,product_id,user_session\n")
    with pytest.raises(InputError, match="no events"):
        etl([str(empty)], tmp_path / "out")
    assert _nothing_written(tmp_path)


def test_existing_output_is_not_overwritten_silently(etl_dir, synth_dir):
    with pytest.raises(FileExistsError):
        etl([os.path.join(synth_dir, "events.parquet")], etl_dir)
    assert json.load(open(os.path.join(etl_dir, "report.json")))["events"] > 0


def test_gpu_without_cudf_fails_at_once_with_the_install_hint(synth_dir, tmp_path):
    pytest.importorskip("numpy")
    try:
        import cudf  # noqa: F401
        pytest.skip("cuDF is installed here")
    except ImportError:
        pass
    with pytest.raises(RuntimeError, match=r"rayrec\[gpu\]"):
        etl([os.path.join(synth_dir, "events.parquet")], tmp_path / "out", EtlConfig(device="gpu"))
    assert _nothing_written(tmp_path)


def test_runs_on_an_existing_multi_process_dask_cluster(synth_dir, etl_dir, tmp_path):
    """--scheduler: workers in other processes (as on other nodes) get the workflow and its
    fitted state over the wire, and produce what the local engine produced."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        etl([os.path.join(synth_dir, "events.parquet")], tmp_path / "out", EtlConfig(scheduler=cluster.scheduler_address))
    a, b = read_all(etl_dir), read_all(str(tmp_path / "out"))
    pd.testing.assert_frame_equal(a.sort_values("user_session").reset_index(drop=True),
                                  b.sort_values("user_session").reset_index(drop=True))
