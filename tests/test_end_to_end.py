"""synth -> etl -> train (2 Ray workers) -> evaluate -> Ray Serve -> real HTTP on 127.0.0.1 -> shutdown."""
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pyarrow.parquet as pq
import pytest

from rayrec.cli import main
from rayrec.quickstart import free_port, post_json


def get(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, json.loads(r.read())


def post_raw(url, body: bytes):
    req = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture
def ray_local():
    import ray

    from rayrec.raylocal import init_ray

    init_ray(num_cpus=2, object_store_memory=200 * 1024 * 1024)
    yield ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


def test_pipeline_end_to_end(tmp_path, ray_local, capsys):
    raw, data, run = tmp_path / "raw", tmp_path / "data", tmp_path / "run"
    assert main(["synth", "--out", str(raw), "--events", "40000", "--days", "4", "--items", "300"]) == 0
    assert main(["etl", "--input", str(raw / "events.parquet"), "--out", str(data)]) == 0
    assert main(["train", "--data", str(data), "--out", str(run), "--workers", "2", "--arch", "gpt2",
                 "--masking", "clm", "--epochs", "4", "--lr", "0.005", "--batch-size", "64"]) == 0
    metrics = json.load(open(run / "metrics.json"))
    assert [d["train_day"] for d in metrics["days"]] == [1, 2, 3]
    assert all(d["train_loss"] < d["first_loss"] for d in metrics["days"])
    assert metrics["average"]["recall@20"] > metrics["popularity_average"]["recall@20"]
    assert sorted(os.listdir(run / "checkpoint")) == ["model.json", "model.safetensors", "progress.json"]

    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--data", str(data), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["days"][0]["day"] == 4 and result["days"][0]["count"] > 0

    from rayrec.serve.app import ServeConfig, start

    port = free_port()
    start(str(run), ServeConfig(port=port, max_events=50))
    base = f"http://127.0.0.1:{port}"
    assert get(base + "/healthz")[0] == 200

    session = pq.read_table(data / "4" / "test.parquet").column("user_session")[0].as_py()
    events = pq.read_table(raw / "events.parquet", filters=[("user_session", "==", session)]).to_pylist()
    req = [{"product_id": e["product_id"], "event_time": e["event_time"]} for e in events]
    status, answer = post_json(base + "/recommend", {"events": req, "k": 5})
    assert status == 200 and len(answer["items"]) == 5 and len(answer["scores"]) == 5
    vocab = [f for f in os.listdir(run / "workflow") if f.endswith(".vocab.product_id.parquet")]
    known = set(pq.read_table(run / "workflow" / vocab[0])["value"].to_pylist())
    assert all(isinstance(i, int) and i in known for i in answer["items"])
    assert answer["scores"] == sorted(answer["scores"], reverse=True)

    # an unknown product is out-of-vocabulary, not an error
    status, answer = post_json(base + "/recommend", {"events": [{"product_id": 1, "event_time": 5}], "k": 3})
    assert status == 200 and len(answer["items"]) == 3
    # bad input
    assert post_raw(base + "/recommend", b"{oops")[0] == 400
    assert post_raw(base + "/recommend", b'{"k": 3}')[0] == 400
    assert post_raw(base + "/recommend", json.dumps({"events": req, "k": "ten"}).encode())[0] == 400
    status, body = post_raw(base + "/recommend", json.dumps({"events": [req[0]] * 51}).encode())
    assert status == 413 and "limit" in body["error"]

    # Everything Ray started listens on loopback, except the Serve replica's internal gRPC
    # server, which Ray itself binds on all interfaces (ray/serve/_private/replica.py).
    ours = [line for line in listening_sockets_all() if "ray::" in line or "raylet" in line or "gcs_server" in line]
    loopback = ("127.0.0.1:", "[::ffff:127.0.0.1]:", "[::1]:")
    exposed = [line for line in ours if not line.split()[3].startswith(loopback)]
    assert [line for line in exposed if "ServeRepli" not in line] == []
    assert any(line.split()[3] == f"127.0.0.1:{port}" for line in listening_sockets_all())


def listening_sockets_all():
    return subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout.splitlines()


def test_cli_help_for_every_verb():
    exe = os.path.join(os.path.dirname(sys.executable), "rayrec")  # the installed entry point
    for verb in ["", "synth", "etl", "train", "evaluate", "serve", "quickstart"]:
        out = subprocess.run([exe, *([verb] if verb else []), "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and "usage: rayrec" in out.stdout, (verb, out.stderr)
