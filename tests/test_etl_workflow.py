"""The fitted workflow as an artifact: YAML, save/load, online == batch, custom ops, and
the REES46 example end to end through `rayrec etl` and `rayrec train`."""
import csv
import json
import os
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayrec.config_io import read_yaml
from rayrec.etl import InputError, Workflow, workflow_from_config
from rayrec.etl.columns import Ragged, to_arrow
from rayrec.schema import Schema

REES46 = os.path.join(os.path.dirname(__file__), "..", "examples", "rees46", "etl.yaml")


def rees46_workflow() -> Workflow:
    return workflow_from_config(read_yaml(REES46)["workflow"], REES46)


@pytest.fixture(scope="module")
def events(synth_dir):
    return pq.read_table(os.path.join(synth_dir, "events.parquet"))


def partitions(table: pa.Table, n=3):
    """Whole sessions per partition, as the pipeline's buckets hold them."""
    key = pd.util.hash_array(table.column("user_session").to_numpy(zero_copy_only=False).astype(object)) % n
    return [table.filter(pa.array(key == i)) for i in range(n)]


def parquet_bytes(table: pa.Table, path) -> bytes:
    pq.write_table(table, path)
    return open(path, "rb").read()


def test_save_load_transform_is_byte_identical(events, tmp_path):
    parts = partitions(events)
    wf = rees46_workflow().fit(parts)
    wf.save(str(tmp_path / "wf"))
    assert sorted(f.rsplit(".", 1)[-1] for f in os.listdir(tmp_path / "wf")) == ["json"] + ["parquet"] * 9
    again = Workflow.load(str(tmp_path / "wf"))
    a, b = wf.transform(parts), again.transform(parts)
    assert a.num_rows > 1000 and a.equals(b)
    assert parquet_bytes(a, tmp_path / "a.parquet") == parquet_bytes(b, tmp_path / "b.parquet")
    assert again.output_schema() == wf.output_schema()


def test_online_equals_batch_on_the_same_sessions(events, tmp_path):
    wf = rees46_workflow().fit(partitions(events))
    wf.save(str(tmp_path / "wf"))
    wf = Workflow.load(str(tmp_path / "wf"))                     # serving loads it from disk
    batch = wf.transform(partitions(events)).to_pandas()
    vocab = wf.categorify_for("user_session")
    raw = events.to_pandas()
    rows = batch.sample(150, random_state=0)
    by_session = dict(tuple(raw.groupby("user_session", sort=False)))
    for _, row in rows.iterrows():
        key = vocab.decode([row["user_session"]], "user_session")[0]
        g = by_session[key].astype(object)
        records = g.where(g.notna(), None).to_dict("records")    # as JSON would carry them
        online = wf.transform_events(records)
        for col in batch.columns:
            got = online[col]
            got = got.values.tolist() if isinstance(got, Ragged) else to_arrow(got).to_pylist()
            want = list(row[col]) if isinstance(got, list) and isinstance(online[col], Ragged) else [row[col]]
            assert np.allclose(np.asarray(got, dtype=float), np.asarray(want, dtype=float)), (key, col)


def test_online_keeps_a_one_event_session_and_coerces_request_types(events):
    wf = rees46_workflow().fit(partitions(events))
    e = events.slice(0, 1).to_pylist()[0]
    e["product_id"] = str(e["product_id"])                      # JSON clients send ids as text
    out = wf.transform_events([e])                              # the >= 2 events filter is not applied online
    assert out["product_id-list_seq"].values.tolist()[0] >= 3
    unseen = dict(e, product_id=123, brand=None)
    out = wf.transform_events([unseen])
    assert out["product_id-list_seq"].values.tolist() == [1] and out["brand-list_seq"].values.tolist() == [2]
    with pytest.raises(InputError, match="event_time"):
        wf.transform_events([dict(e, event_time="not a time")])


def test_yaml_errors_name_the_op_and_field():
    with pytest.raises(ValueError, match=r"ops\[0\]: unknown op 'Categorize'"):
        workflow_from_config({"ops": [{"op": "Categorize", "columns": ["a"]}]}, "cfg.yaml: workflow")
    with pytest.raises(ValueError, match=r"ops\[0\]: op Categorify: unknown parameter\(s\) \['colums'\]"):
        workflow_from_config({"ops": [{"op": "Categorify", "colums": ["a"]}]}, "cfg.yaml: workflow")
    with pytest.raises(ValueError, match=r"op 1 \(Normalize\) reads \['b'\], which no earlier op writes"):
        workflow_from_config({"input": {"columns": ["a"]}, "ops": [{"op": "LogOp", "columns": ["a"]},
                                                                   {"op": "Normalize", "columns": ["b"]}]}, "w")


PLUGIN = '''
from dataclasses import dataclass
import numpy as np
from rayrec.etl import Op, register_function, register_op

@register_op
@dataclass
class PriceBand(Op):
    """A custom op: price above the median seen at fit."""
    column: str
    out: str
    stateful = True

    def partial(self, frame):
        return frame[self.column]

    def combine(self, parts):
        self._state = {"median": float(np.nanmedian(np.concatenate(parts)))}

    def transform(self, frame):
        return {**frame, self.out: (frame[self.column] > self._state["median"]).astype(np.int64)}

register_function("cents")(lambda price: np.round(price * 100))
'''


def test_custom_op_and_function_from_a_plugin_are_saved_by_name(events, tmp_path, monkeypatch):
    (tmp_path / "my_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    section = {"plugins": ["my_plugin"], "input": {"numeric": ["price"], "columns": ["price"]},
               "ops": [{"op": "PriceBand", "column": "price", "out": "band"},
                       {"op": "Apply", "function": "cents", "columns": ["price"], "out": "cents"}]}
    wf = workflow_from_config(section, "w")
    out = wf.fit(events.select(["price"])).transform(events.select(["price"]))
    price = events.column("price").to_numpy()
    assert out.column("band").to_numpy().tolist() == (price > np.median(price)).astype(int).tolist()
    assert np.allclose(out.column("cents").to_numpy(), np.round(price * 100))
    wf.save(str(tmp_path / "wf"))
    saved = json.load(open(tmp_path / "wf" / "workflow.json"))
    assert [o["op"] for o in saved["ops"]] == ["PriceBand", "Apply"] and "my_plugin" not in json.dumps(saved)
    assert Workflow.load(str(tmp_path / "wf")).transform(events.select(["price"])).equals(out)
    del sys.modules["my_plugin"]
    from rayrec.etl.op import OPS
    OPS.pop("PriceBand")                                          # a process that never imported the plugin
    with pytest.raises(ValueError, match="unknown op 'PriceBand'"):
        Workflow.load(str(tmp_path / "wf"))


@pytest.fixture(scope="module")
def rees46_dir(synth_dir, tmp_path_factory):
    from rayrec.cli import main

    data = tmp_path_factory.mktemp("rees46") / "data"
    assert main(["etl", "--config", REES46, "--input", os.path.join(synth_dir, "events.parquet"),
                 "--out", str(data)]) == 0
    return data


def test_rees46_example_runs_through_the_cli_and_trains(rees46_dir, tmp_path):
    from rayrec.cli import main

    data, run = rees46_dir, tmp_path / "run"
    schema = Schema.load(str(data))
    item = schema.item_id_column()
    assert item.name == "product_id-list_seq" and item.value_count_max == 20 and item.properties["first_code"] == 3
    assert {"categorical", "list"} <= set(schema["brand-list_seq"].tags)
    assert {"continuous", "list"} <= set(schema["price_log_norm-list_seq"].tags)
    assert "session_id" in schema["user_session"].tags and schema["user_session"].domain_max > 1000
    assert Schema.load(str(data / "schema.pbtxt")) == schema
    train = pq.read_table(data / "1" / "train.parquet")
    assert train.schema.names == schema.names
    assert max(len(x) for x in train.column("product_id-list_seq").to_pylist()) <= 20
    assert main(["train", "--data", str(data), "--out", str(run), "--workers", "0", "--epochs", "2",
                 "--train-days", "1:2"]) == 0
    metrics = json.load(open(run / "metrics.json"))
    assert metrics["average"]["recall@20"] > metrics["popularity_average"]["recall@20"]
    rows = list(csv.DictReader(open(run / "metrics.csv")))  # one row per day, then the mean
    assert [r["train_day"] for r in rows] == ["1", "2", "mean"]
    assert float(rows[-1]["recall@20"]) == pytest.approx(metrics["average"]["recall@20"])
    assert open(run / "metrics.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("example", ["gru-clm", "xlnet-mlm", "xlnet-mlm-side", "gpt2-clm"])
def test_tutorial_model_examples_train_on_rees46_output(rees46_dir, synth_dir, tmp_path, example):
    """The reference tutorials' models, as configs, train on the REES46 pipeline's output."""
    from rayrec.cli import main

    config = os.path.join(os.path.dirname(REES46), f"{example}.yaml")
    run = tmp_path / "run"
    assert main(["train", "--data", str(rees46_dir), "--out", str(run), "--config", config, "--workers", "0",
                 "--epochs", "2", "--train-days", "1:1"]) == 0
    metrics = json.load(open(run / "metrics.json"))
    day = metrics["days"][0]
    assert day["train_loss"] < day["first_loss"] and day["recall@20"] > 0
    model = json.load(open(run / "checkpoint" / "model.json"))
    names = [f["name"] for f in model["features"]]
    assert names[0] == "product_id-list_seq"
    if example == "xlnet-mlm-side":
        assert len(names) == 8 and model["model"]["continuous"] == "soft_onehot"
        # the online path feeds every side feature from raw events: top-k from a live session
        from rayrec.serve.predictor import Recommender

        rec = Recommender(str(run))
        raw = pq.read_table(os.path.join(synth_dir, "events.parquet")).slice(0, 2000).to_pandas()
        session = raw[raw.user_session == raw.user_session.dropna().iloc[0]].head(6)
        events = session.astype(object).where(session.notna(), None).to_dict("records")
        items, scores = rec.recommend(events, 5)
        seen_items, _ = rec.recommend(events, 5, exclude_seen=True)
        assert len(items) == 5 and scores == sorted(scores, reverse=True)
        assert not set(seen_items) & set(session.product_id)
        # side features batched: sessions of different lengths in one batch, each as alone
        from rayrec.serve.predictor import Query

        many = rec.recommend_many([Query(events, 5), Query(events[:3], 5)])
        assert many[0][0] == items and many[1][0] == rec.recommend(events[:3], 5)[0]


def test_data_prepared_by_nvtabular_builds_and_trains_a_model(tmp_path):
    from conftest import shared_path
    from rayrec.models.config import ModelConfig
    from rayrec.train.config import TrainConfig
    from rayrec.train.trainer import run_training

    src = shared_path("data", "nvtabular-rees46")
    schema = Schema.load(os.path.join(src, "schema.pbtxt"))
    item = schema.item_id_column()
    assert item.name == "product_id-list_seq" and item.value_count_max == 20 and item.cardinality == 1980
    table = pq.read_table(os.path.join(src, "part_0.parquet"))
    days = table.column("day_index").to_numpy()
    data = tmp_path / "nvt"
    for d in (1, 2):                                             # lay it out by day as rayrec etl would
        os.makedirs(data / str(d))
        part = table.filter(pa.array(days == d))
        idx = np.arange(part.num_rows)
        for name, sel in (("train", idx % 10 < 8), ("valid", idx % 10 == 8), ("test", idx % 10 == 9)):
            pq.write_table(part.filter(pa.array(sel)), data / str(d) / f"{name}.parquet")
    with open(os.path.join(src, "schema.pbtxt")) as f:
        (data / "schema.pbtxt").write_text(f.read())
    metrics = run_training(str(data), str(tmp_path / "run"), ModelConfig(), TrainConfig(workers=0, epochs=2,
                                                                                       train_days="1"))
    day = metrics["days"][0]
    assert day["train_loss"] < day["first_loss"] and day["count"] > 50
