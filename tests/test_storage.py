"""Every stage on an S3-compatible server (moto on 127.0.0.1), through the code paths a
user on S3 hits: ETL in and out, training data, the run, evaluation and serving; atomic
publishing; errors that name the URI and the credentials."""
import json
import os

import pyarrow.fs as pafs
import pytest

from rayrec.files import MANIFEST
from rayrec.storage import StorageError, locate
from s3server import S3Server

MODEL = ["--arch", "gpt2", "--d-model", "32", "--n-head", "2", "--n-layer", "1"]


@pytest.fixture(scope="module")
def s3():
    with S3Server() as server:
        yield server


@pytest.fixture
def s3env(s3, monkeypatch):
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    return s3


def objects(uri: str) -> list[str]:
    loc = locate(uri)
    return sorted(i.path[len(loc.path) + 1:] for i in loc.list(recursive=True) if i.type == pafs.FileType.File)


def test_etl_train_evaluate_serve_all_on_s3(s3env, synth_dir, tmp_path):
    from rayrec.cli import main
    from rayrec.serve.predictor import Recommender

    bucket = s3env.make_bucket("stages")
    locate(f"{bucket}/raw").upload(synth_dir)
    assert main(["etl", "--input", f"{bucket}/raw/events.parquet", "--out", f"{bucket}/data"]) == 0
    data = objects(f"{bucket}/data")
    assert MANIFEST in data and "1/train.parquet" in data and "workflow/workflow.json" in data
    assert not any(p.startswith("_tmp") for p in data)       # staged buckets and parts are gone
    manifest = locate(f"{bucket}/data/{MANIFEST}").read_json()
    assert {f["path"] for f in manifest["files"]} == set(data) - {MANIFEST}
    # a complete output is not replaced without --overwrite
    assert main(["etl", "--input", f"{bucket}/raw/events.parquet", "--out", f"{bucket}/data"]) == 2

    run = f"{bucket}/runs/r1"
    assert main(["train", "--data", f"{bucket}/data", "--out", run, "--workers", "0", "--epochs", "1",
                 "--train-days", "1:2", *MODEL]) == 0
    files = objects(run)
    assert {MANIFEST, "metrics.json", "checkpoint/model.safetensors", "workflow/workflow.json"} <= set(files)
    assert not [p for p in objects(bucket) if ".tmp-" in p]     # no temporary prefix left behind
    metrics = locate(f"{run}/metrics.json").read_json()
    assert [d["train_day"] for d in metrics["days"]] == [1, 2]

    assert main(["evaluate", "--run", run, "--data", f"{bucket}/data", "--days", "3"]) == 0
    remote = Recommender(run)
    local = locate(run).download(str(tmp_path / "run"))
    events = [{"product_id": 1000, "event_time": 1.0e9}, {"product_id": 1001, "event_time": 1.0e9 + 60}]
    assert remote.recommend(events, 5) == Recommender(local).recommend(events, 5)


def test_readers_trust_only_published_outputs(s3env):
    from rayrec.cli import main

    bucket = s3env.make_bucket("partial")
    # what an interrupted ETL leaves: data files but no manifest
    locate(f"{bucket}/data/1/train.parquet").write_bytes(b"PAR1")
    locate(f"{bucket}/data/schema.json").write_bytes(json.dumps({"columns": []}).encode())
    with pytest.raises(FileNotFoundError, match="not a complete ETL output"):
        from rayrec.train.data import day_dirs
        day_dirs(f"{bucket}/data")
    assert main(["train", "--data", f"{bucket}/data", "--out", f"{bucket}/run", "--workers", "0"]) == 2


def test_bad_input_on_s3_leaves_nothing(s3env, tmp_path):
    from rayrec.cli import main

    bucket = s3env.make_bucket("bad")
    locate(f"{bucket}/raw/events.csv").write_bytes(
        b"user_session,product_id,event_time\ns1,10,2020-01-01 10:00:00\ns1,11,not a time\n")
    assert main(["etl", "--input", f"{bucket}/raw/events.csv", "--out", f"{bucket}/data"]) == 2
    assert objects(f"{bucket}/data") == []


def test_missing_credentials_and_unreachable_buckets_name_the_uri(s3, monkeypatch, tmp_path):
    from rayrec.storage import _filesystem

    _filesystem.cache_clear()
    for k in list(os.environ):
        if k.startswith("AWS_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(StorageError) as e:
        locate("s3://nocreds/data")
    assert "s3://nocreds/data" in str(e.value) and "AWS_ACCESS_KEY_ID" in str(e.value)
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    _filesystem.cache_clear()
    with pytest.raises(StorageError, match="bucket 'nosuchbucket' does not exist"):
        locate("s3://nosuchbucket/data")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")   # nothing listens there
    _filesystem.cache_clear()
    with pytest.raises(StorageError, match="cannot reach the bucket") as e:
        locate("s3://stages/data")
    assert "AWS_ENDPOINT_URL" in str(e.value)
    _filesystem.cache_clear()
