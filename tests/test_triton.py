"""`rayrec export triton` against a real tritonserver (the nvidia-pytriton wheel's binary,
in its own venv, started on free 127.0.0.1 ports): the ensemble answers exactly what the
in-process Recommender answers, over HTTP and gRPC, for a GPT-2 CLM model and the REES46
XLNet-MLM model with side features; bad requests are error responses and the server
stays up; the export refuses runs it cannot serve and writes its repository atomically."""
import os
import shutil

import numpy as np
import pytest

from rayrec.serve.predictor import Recommender
from rayrec.serve.triton_repo import TritonExport, export_triton, model_names

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="session")
def rees46_run(synth_dir, tmp_path_factory):
    """The REES46 tutorial's XLNet-MLM with side features (its own ETL and model config),
    trained on day 1, and raw held-out sessions of days 2-4 with every field it reads."""
    import pyarrow.parquet as pq

    from rayrec.config_io import from_dict, read_section
    from rayrec.etl import EtlConfig, run_etl, workflow_from_config
    from rayrec.models.config import ModelConfig
    from rayrec.train.config import TrainConfig
    from rayrec.train.trainer import run_training

    etl_yaml = os.path.join(ROOT, "examples", "rees46", "etl.yaml")
    model_yaml = os.path.join(ROOT, "examples", "rees46", "xlnet-mlm-side.yaml")
    base = tmp_path_factory.mktemp("rees46")
    raw = os.path.join(synth_dir, "events.parquet")
    run_etl([raw], str(base / "data"), from_dict(EtlConfig, read_section(etl_yaml, "etl"), "etl"),
            workflow_from_config(read_section(etl_yaml, "workflow"), etl_yaml), progress=lambda m: None)
    model = from_dict(ModelConfig, read_section(model_yaml, "model"), model_yaml)
    run = str(base / "run")
    run_training(str(base / "data"), run, model, TrainConfig(workers=0, epochs=1, train_days="1:1"), quiet=True)
    return run, held_out(run, raw)


def held_out(run: str, raw: str, n: int = 220) -> list:
    import pyarrow.parquet as pq

    fields = [f for f in Recommender(run).workflow.raw_columns() if f != "user_session"]
    events = pq.read_table(raw, columns=sorted(set(fields) | {"user_session"})).to_pylist()
    first_day = min(e["event_time"][:10] for e in events)
    sessions: dict = {}
    for e in events:
        sessions.setdefault(e["user_session"], []).append(e)
    out = [[{f: e[f] for f in fields} for e in s] for s in sessions.values()
           if s[0]["event_time"][:10] != first_day and len(s) >= 2]
    return out[:n]


@pytest.fixture(scope="session")
def triton(served_run, synth_dir, rees46_run, tmp_path_factory):
    """One tritonserver holding both models' repositories (`gpt` on Triton's python backend
    for ONNX, the only one this server has; `side` likewise), and the runs behind them."""
    from rayrec.serve import triton_local

    try:
        triton_local.server_venv()
    except RuntimeError as e:        # no package index: the reason is shown, nothing is faked
        pytest.skip(f"the tritonserver venv cannot be built here: {e}")
    base = tmp_path_factory.mktemp("triton")
    gpt_run = served_run[0]
    runs = {"gpt": (gpt_run, held_out(gpt_run, os.path.join(synth_dir, "events.parquet"))), "side": rees46_run}
    repos = []
    for name, (run, _) in runs.items():
        repos.append(export_triton(run, str(base / name), TritonExport(name=name, model_backend="python")))
    server = triton_local.start(repos, [m for name in runs for m in model_names(name)], timeout_s=180)
    yield server, runs
    server.stop()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("name", ["gpt", "side"])
def test_the_ensemble_answers_what_the_recommender_answers(triton, name, protocol):
    from rayrec.serve.triton import TritonRecommender

    server, runs = triton
    run, sessions = runs[name]
    assert len(sessions) >= 200
    rec = Recommender(run)
    client = TritonRecommender(server.http_url if protocol == "http" else server.grpc_url, name, protocol)
    try:
        for k in (1, 10, 100):
            for exclude in (False, True):
                got = []
                for start in range(0, len(sessions), 50):      # requests of 50 sessions, then one alone
                    got += client.recommend_many(sessions[start:start + 50], k, exclude)
                got[0] = client.recommend(sessions[0], k, exclude)
                for events, (items, scores) in zip(sessions, got):
                    want_items, want_scores = rec.recommend(events, k, exclude)
                    np.testing.assert_allclose(scores, want_scores, atol=1e-4)
                    assert_same_ranking(items, want_items, want_scores, (k, exclude, events))
        long = [s for s in sessions if len(s) > rec.model.cfg.max_len]
        assert long, "no session longer than the model's window: exclude_seen beyond it is untested"
    finally:
        client.close()


def assert_same_ranking(items, want_items, want_scores, context, tie=1e-5):
    """The same items in the same order, except that items whose in-process scores are
    within `tie` (float noise between ONNX Runtime and torch) may trade places."""
    if items == want_items:
        return
    score = dict(zip(want_items, want_scores))
    last = want_scores[-1]
    for i, (a, b) in enumerate(zip(items, want_items)):
        if a != b:
            assert abs(score.get(a, last) - score[b]) <= tie, (i, a, b, score.get(a), score[b], context)


@pytest.fixture
def gpt(triton):
    """An HTTP client of the GPT-2 ensemble, the Recommender of its run and its sessions."""
    from rayrec.serve.triton import TritonRecommender

    server, runs = triton
    run, sessions = runs["gpt"]
    client = TritonRecommender(server.http_url, "gpt")
    yield client, Recommender(run), sessions
    client.close()


def test_unknown_ids_are_out_of_vocabulary_as_in_process(gpt):
    client, rec, sessions = gpt
    events = [dict(e, product_id=10**12 + i) for i, e in enumerate(sessions[3])] + sessions[4]
    (items, scores), (want_items, want_scores) = client.recommend(events, 10), rec.recommend(events, 10)
    assert items == want_items
    np.testing.assert_allclose(scores, want_scores, atol=1e-4)
    only_unknown = [dict(e, product_id=10**12 + i) for i, e in enumerate(sessions[5])]
    assert client.recommend(only_unknown, 5)[0] == rec.recommend(only_unknown, 5)[0]


def raw_infer(url: str, name: str, arrays: dict, types: dict):
    import tritonclient.http as http

    client = http.InferenceServerClient(url)
    try:
        inputs = []
        for field, a in arrays.items():
            t = http.InferInput(field, list(a.shape), types[field])
            t.set_data_from_numpy(a)
            inputs.append(t)
        return client.infer(name, inputs)
    finally:
        client.close()


def test_bad_requests_are_error_responses_and_the_server_stays_up(triton, gpt):
    from tritonclient.utils import InferenceServerException

    server = triton[0]
    client, rec, sessions = gpt
    good = {"event_time": np.array([[b"2019-10-02 10:00:00 UTC", b"2019-10-02 10:01:00 UTC"]], dtype=object),
            "product_id": np.array([[sessions[0][0]["product_id"], sessions[0][1]["product_id"]]], dtype=np.int64),
            "lengths": np.array([[2]], dtype=np.int32), "k": np.array([[5]], dtype=np.int32),
            "exclude_seen": np.array([[False]])}
    types = {"event_time": "BYTES", "product_id": "INT64", "lengths": "INT32", "k": "INT32", "exclude_seen": "BOOL"}
    assert raw_infer(server.http_url, "gpt", good, types).as_numpy("item_ids").shape == (1, 5)
    cases = {
        "k over max_k": (dict(good, k=np.array([[101]], dtype=np.int32)), types, "k must lie in 1..100"),
        "k of 0": (dict(good, k=np.array([[0]], dtype=np.int32)), types, "k must lie"),
        "an empty session": (dict(good, lengths=np.array([[0]], dtype=np.int32)), types, "lengths"),
        "lengths past the events": (dict(good, lengths=np.array([[3]], dtype=np.int32)), types, "lengths"),
        "a time that is not a time": (dict(good, event_time=np.array([[b"soon", b"later"]], dtype=object)), types,
                                      "event_time"),
        "ids of the wrong dtype": (dict(good, product_id=good["product_id"].astype(np.float32)),
                                   dict(types, product_id="FP32"), "product_id"),
        "a missing input": ({k: v for k, v in good.items() if k != "lengths"}, types, "lengths"),
    }
    for case, (arrays, dtypes, says) in cases.items():
        with pytest.raises(InferenceServerException) as err:
            raw_infer(server.http_url, "gpt", arrays, dtypes)
        assert says in str(err.value), (case, str(err.value))
    assert client.recommend(sessions[0], 10)[0] == rec.recommend(sessions[0], 10)[0]   # alive, and as right
    assert server.process.poll() is None


def test_the_export_refuses_what_it_cannot_serve_and_writes_atomically(served_run, tmp_path):
    run = served_run[0]
    bare = tmp_path / "bare"
    shutil.copytree(run, bare)
    shutil.rmtree(bare / "workflow")
    with pytest.raises(FileNotFoundError, match="no workflow/"):
        export_triton(str(bare), str(tmp_path / "repo"), TritonExport())
    assert not (tmp_path / "repo").exists()

    other = tmp_path / "other"           # a workflow of another catalogue than the model's
    shutil.copytree(run, other)
    vocab = next(p for p in os.listdir(other / "workflow") if "vocab" in p)
    import pyarrow.parquet as pq

    table = pq.read_table(other / "workflow" / vocab)
    pq.write_table(table.slice(0, len(table) // 2), other / "workflow" / vocab)
    with pytest.raises(ValueError, match="item rows"):
        export_triton(str(other), str(tmp_path / "repo"), TritonExport())
    assert [p for p in os.listdir(tmp_path) if "repo" in p] == []     # nothing half-written

    out = export_triton(run, str(tmp_path / "repo"), TritonExport(name="x", max_k=7, instances=2))
    assert sorted(os.listdir(out)) == sorted(model_names("x") + ["README.md"])
    config = (tmp_path / "repo" / "x_model" / "config.pbtxt").read_text()
    assert 'backend: "onnxruntime"' in config and "dynamic_batching" in config and "count: 2" in config
    assert "max_batch_size: 64" in config
    with pytest.raises(FileExistsError):
        export_triton(run, out, TritonExport())
    with pytest.raises(ValueError, match="--model-backend"):
        TritonExport(model_backend="tensorrt")


def test_the_cli_exports_and_queries(triton, tmp_path, capsys):
    import json

    from rayrec.cli import main

    server, runs = triton
    run, sessions = runs["gpt"]
    assert main(["export", "triton", "--run", run, "--out", str(tmp_path / "repo"), "--name", "cli",
                 "--model-backend", "python", "--max-k", "20"]) == 0
    assert "Triton repository written" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "repo")) == sorted(model_names("cli") + ["README.md"])
    (tmp_path / "s.json").write_text(json.dumps(sessions[7]))
    assert main(["query", "--triton", server.http_url, "--name", "gpt", "--events", str(tmp_path / "s.json"),
                 "--k", "4", "--protocol", "http"]) == 0
    assert json.loads(capsys.readouterr().out)["items"] == Recommender(run).recommend(sessions[7], 4)[0]
    assert main(["query", "--triton", server.http_url, "--name", "gpt", "--events", str(tmp_path / "s.json"),
                 "--k", "500"]) == 2
    assert "k must lie in 1..100" in capsys.readouterr().err
