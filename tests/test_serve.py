"""The endpoint on a real Ray Serve, over HTTP on 127.0.0.1: two batching replicas answer
concurrent requests exactly as the in-process predictor does, every error is a 4xx of one
shape, overload is a 503 with Retry-After, and /metrics counts what was sent."""
import contextlib
import json
import os
import threading
import time
import urllib.error
import urllib.request

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rayrec.quickstart import free_port
from rayrec.serve.predictor import Recommender


def call(url, body=None, raw=None, timeout=60):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            text = r.read().decode()
            return r.status, dict(r.headers), (json.loads(text) if "json" in r.headers.get("content-type", "") else text)
    except urllib.error.HTTPError as e:
        text = e.read()
        try:
            return e.code, dict(e.headers), json.loads(text or b"{}")
        except ValueError:   # Ray Serve's proxy answers its own 503 (queue full) in plain text
            return e.code, dict(e.headers), {"text": text.decode(errors="replace")}


# the queues hold every request the tests send at once: overload has its own test below
ROOMY = dict(num_replicas=2, max_batch_size=16, batch_wait_timeout_s=0.005, max_events=50, max_sessions=20,
             max_queued_requests=400, max_waiting_sessions=None, omp_wait=2000)


@pytest.fixture(scope="module")
def endpoint(served_run):
    import ray

    from rayrec.serve.app import ServeConfig, start, stop

    run, sessions = served_run
    port = free_port()
    ray.shutdown()       # a cluster left by an earlier test module
    start(run, ServeConfig(port=port, **ROOMY))
    yield f"http://127.0.0.1:{port}", Recommender(run), sessions, run
    stop()
    ray.shutdown()


def test_two_batching_replicas_answer_200_concurrent_requests_as_the_predictor_does(endpoint):
    base, rec, sessions, _ = endpoint
    answers = [None] * 200

    def client(i):
        answers[i] = call(base + "/recommend", {"events": sessions[i % len(sessions)], "k": 7})

    threads = [threading.Thread(target=client, args=(i,)) for i in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [a[0] for a in answers] == [200] * 200
    for i, (_, headers, body) in enumerate(answers):
        items, scores = rec.recommend(sessions[i % len(sessions)], 7)
        assert body["items"] == items and body["scores"] == pytest.approx(scores, abs=1e-5)
        assert headers["x-model-version"] == rec.version
    status, _, batch = call(base + "/recommend/batch", {"sessions": [{"events": s, "k": 3} for s in sessions[:5]]})
    assert status == 200 and [r["items"] for r in batch["results"]] == [rec.recommend(s, 3)[0] for s in sessions[:5]]


def test_readyz_names_the_version_and_openapi_documents_the_routes(endpoint):
    base, rec, _, run = endpoint
    status, headers, ready = call(base + "/readyz")
    assert status == 200 and ready["version"] == rec.version and ready["items"] == rec.catalogue_size
    assert rec.version.startswith("run:days 1-1:")
    from rayrec.serve.config import ServeConfig

    assert ready["threads"] == ServeConfig(**ROOMY).replica_threads()      # auto: the cores split by 2 replicas
    # serve.omp_wait reached the replica's process before torch loaded there (its runtime_env)
    assert ready["omp_wait"] == "spin 2000"
    assert call(base + "/healthz")[:2][0] == 200
    status, _, spec = call(base + "/openapi.json")
    assert status == 200 and {"/recommend", "/recommend/batch", "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
    assert call(base + "/docs")[0] == 200


@pytest.mark.parametrize("raw, status, field", [
    (b"{oops", 400, "body"),
    (b'{"k": 3}', 400, "events"),
    (b'{"events": [], "k": 3}', 400, "events"),
    (json.dumps({"events": [{"product_id": 1}], "k": "ten"}).encode(), 400, "k"),
    (json.dumps({"events": [{"product_id": 1}], "kk": 1}).encode(), 400, "kk"),
    (json.dumps({"events": [{"product_id": [[1]]}]}).encode(), 400, "events[0].product_id"),
    (json.dumps({"events": [{"product_id": 7.7e307}]}).encode(), 400, "events"),
    (b'{"events": [{"product_id": NaN}]}', 400, "events"),
    (b'{"events": ' + b"[" * 3000 + b"]" * 3000 + b"}", 400, "body"),
    (json.dumps({"events": [{"product_id": 1}] * 51}).encode(), 413, "events"),
    (json.dumps({"events": [{"product_id": 1}], "k": 10 ** 6}).encode(), 400, "k"),
    (json.dumps({"events": [{"product_id": 1}], "include": [{"a": 1}]}).encode(), 400, "include[0]"),
    (json.dumps({"events": [{"product_id": 1}], "exclude": ["x"]}).encode(), 400, "exclude"),
    (b" " * (2 << 20), 413, "body"),
])
def test_a_bad_request_is_a_4xx_naming_its_field(endpoint, raw, status, field):
    base, rec, sessions, _ = endpoint
    got, headers, body = call(base + "/recommend", raw=raw)
    assert (got, body.get("field")) == (status, field), body
    assert body["error"] and headers["x-model-version"] == rec.version
    assert call(base + "/recommend", {"events": sessions[0], "k": 5})[2]["items"] == rec.recommend(sessions[0], 5)[0]


def test_too_many_sessions_in_a_batch_is_a_413(endpoint):
    base, _, sessions, _ = endpoint
    status, _, body = call(base + "/recommend/batch", {"sessions": [{"events": sessions[0]}] * 21})
    assert status == 413 and body["field"] == "sessions"
    status, _, body = call(base + "/recommend/batch", {"sessions": [{"events": sessions[0]}, {"events": [{"product_id": [1]}]}]})
    assert status == 400 and body["field"] == "sessions[1].events[0].product_id"


def test_metrics_count_the_requests_sent(endpoint):
    base = endpoint[0]
    time.sleep(1.5)   # the earlier tests' counts have reached the store from every replica
    before, queued = requests_counted(base), counted(base, "rayrec_queue_seconds_count")
    for _ in range(7):
        call(base + "/recommend", {"events": endpoint[2][1], "k": 2})
    call(base + "/recommend", raw=b"{oops")
    call(base + "/recommend/batch", {"sessions": [{"events": endpoint[2][1]}] * 3})
    time.sleep(1.5)   # each replica sends its counts every 0.5 s
    status, headers, text = call(base + "/metrics")
    after = requests_counted(base)
    assert after.get(("/recommend", "200"), 0) - before.get(("/recommend", "200"), 0) == 7
    assert after.get(("/recommend", "400"), 0) - before.get(("/recommend", "400"), 0) == 1
    # every session scored waited for the scorer once: 7 alone, 3 in one batch
    assert counted(base, "rayrec_queue_seconds_count") - queued == 10
    assert "rayrec_batch_seconds_sum" in text
    assert "rayrec_request_seconds_bucket" in text and "rayrec_batch_sessions_count" in text
    assert f'rayrec_model_info{{version="{headers["x-model-version"]}"}} 1' in text


def counted(base, name):
    return float(next(line.split()[-1] for line in call(base + "/metrics")[2].splitlines()
                      if line.startswith(name + "{")))


def requests_counted(base):
    text = call(base + "/metrics")[2]
    out = {}
    for line in text.splitlines():
        if line.startswith("rayrec_requests_total{"):
            labels, value = line[len("rayrec_requests_total{"):].split("} ")
            d = dict(part.split("=") for part in labels.split(","))
            out[(d["route"].strip('"'), d["status"].strip('"'))] = int(value)
    return out


# --- hostile input: property-based, from the request schema ------------------------------
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(10 ** 30), 10 ** 30) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)
FIELDS = ["events", "k", "exclude_seen", "include", "exclude", "sessions", "extra"]


def hostile_bodies(sessions):
    """Arbitrary JSON; a real session with one field (or one event's field) replaced by junk;
    a real session nested deep; raw bytes."""
    real = st.sampled_from(sessions[:20])
    replace_field = st.builds(lambda s, f, v: {"events": s, "k": 5, f: v}, real, st.sampled_from(FIELDS), JSON)
    replace_event = st.builds(lambda s, i, key, v: {"events": [dict(e, **({key: v} if j == i % len(s) else {}))
                                                               for j, e in enumerate(s)]},
                              real, st.integers(0, 50), st.sampled_from(["product_id", "event_time", "price"]), JSON)
    nested = st.integers(2, 5000).map(lambda n: b'{"events": ' + b"[" * n + b"]" * n + b"}")
    as_json = (JSON | replace_field | replace_event).map(lambda v: json.dumps(v).encode())
    return as_json | nested | st.binary(max_size=200)


def test_fuzzed_bodies_get_a_4xx_naming_the_field_never_a_5xx(endpoint):
    base, rec, sessions, _ = endpoint
    seen = []

    @settings(max_examples=200, deadline=None, derandomize=True, database=None)
    @given(body=hostile_bodies(sessions), route=st.sampled_from(["/recommend", "/recommend/batch"]))
    def one(body, route):
        status, _, answer = call(base + route, raw=body)
        seen.append(status)
        assert status < 500, (body[:200], answer)
        if status >= 400:
            assert answer["error"] and answer["field"], (body[:200], answer)

    one()
    assert seen.count(200) + sum(400 <= s < 500 for s in seen) == len(seen) and any(s == 400 for s in seen)
    assert call(base + "/recommend", {"events": sessions[3], "k": 6})[2]["items"] == rec.recommend(sessions[3], 6)[0]


@pytest.mark.parametrize("events, status, field", [
    ([{"product_id": 10 ** 12, "event_time": "2019-10-03 10:00:00 UTC"}], 200, None),      # an unknown id
    ([{"product_id": 5, "event_time": "yesterday"}], 400, "events"),                         # a time that cannot be parsed
    ([{"product_id": 5, "event_time": 10 ** 25}], 400, "events"),
    ([{"product_id": "five", "event_time": "2019-10-03 10:00:00 UTC"}], 400, "events"),      # a column of the wrong type
    ([{"product_id": 5}], 200, None),                                                          # one event, no time
    ([{"product_id": 5}] * 50, 200, None),                                                     # max_events
    ([{"product_id": 5}] * 51, 413, "events"),                                                 # max_events + 1
])
def test_hand_made_events(endpoint, events, status, field):
    base, rec, sessions, _ = endpoint
    got, _, answer = call(base + "/recommend", {"events": events, "k": 3})
    assert (got, answer.get("field")) == (status, field), answer
    if status == 200:
        assert answer["items"] == rec.recommend(events, 3)[0]


@pytest.mark.parametrize("where", ["proxy", "replica"])
def test_overload_is_a_503_with_retry_after_and_the_endpoint_recovers(endpoint, where):
    """Past Serve's queue the proxy refuses; past `max_waiting_sessions` the replica does,
    before reading the body, in the endpoint's own error shape."""
    from ray import serve

    from rayrec.serve.app import APP, ServeConfig, endpoint as app_of

    base, rec, sessions, run = endpoint
    tight = ServeConfig(num_replicas=1, max_ongoing_requests=1, max_queued_requests=1, max_events=50,
                        batching=False, retry_after_s=2) if where == "proxy" else \
        ServeConfig(num_replicas=1, max_waiting_sessions=2, max_batch_size=2, max_events=50, retry_after_s=3)
    serve.run(app_of(run, tight), name=APP, route_prefix="/")
    try:
        got = [None] * 40

        def client(i):
            if where == "proxy":
                got[i] = call(base + "/recommend/batch",
                              {"sessions": [{"events": sessions[j], "k": 50} for j in range(20)]})
            else:
                got[i] = call(base + "/recommend", {"events": sessions[i % len(sessions)], "k": 50})

        for _ in range(3):   # a burst the scorer happened to keep up with is sent again
            threads = [threading.Thread(target=client, args=(i,)) for i in range(40)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            codes = [g[0] for g in got]
            if 503 in codes:
                break
        assert set(codes) <= {200, 503} and codes.count(503) > 0 and codes.count(200) > 0, codes
        refused = [g for g in got if g[0] == 503]
        assert all(g[1].get("retry-after") == str(tight.retry_after_s) for g in refused)
        if where == "replica":
            assert all(g[2]["error"].startswith("overloaded") and g[2]["field"] is None and
                       g[1].get("x-model-version") == rec.version for g in refused), refused[0]
            for i, g in enumerate(got):
                if g[0] == 200:
                    assert g[2]["items"] == rec.recommend(sessions[i % len(sessions)], 50)[0]
        assert call(base + "/recommend", {"events": sessions[0], "k": 5})[2]["items"] == rec.recommend(sessions[0], 5)[0]
    finally:
        serve.run(app_of(run, ServeConfig(**ROOMY)), name=APP, route_prefix="/")


@pytest.fixture(scope="module")
def other_runs(etl_dir, synth_dir, tmp_path_factory):
    """A newer run of the same data (other answers), and one whose workflow reads other
    event fields (items by category), which may not replace it."""
    from conftest import etl
    from rayrec.etl import EtlConfig
    from rayrec.models.config import ModelConfig
    from rayrec.train.config import TrainConfig
    from rayrec.train.trainer import run_training

    root = tmp_path_factory.mktemp("refresh")
    model = ModelConfig(d_model=32, n_head=2, n_layer=1, max_len=8)
    newer = str(root / "newer")
    run_training(etl_dir, newer, model, TrainConfig(workers=0, epochs=2, train_days="1:2", seed=7), quiet=True)
    by_category = root / "by-category-data"
    etl([os.path.join(synth_dir, "events.parquet")], by_category, EtlConfig(item_col="category_id"))
    misfit = str(root / "misfit")
    run_training(str(by_category), misfit, model, TrainConfig(workers=0, epochs=1, train_days="1:1"), quiet=True)
    return newer, misfit


def send_until(base, sessions, stop, out):
    i = 0
    while not stop.is_set():
        s = sessions[i % len(sessions)]
        status, headers, body = call(base + "/recommend", {"events": s, "k": 5})
        out.append((status, headers.get("x-model-version"), body.get("items"), i % len(sessions)))
        i += 1


@contextlib.contextmanager
def requests_through(base, sessions):
    """Requests sent one after another for as long as the block runs (from a second before
    it); yields the list their answers go to."""
    stop, answers = threading.Event(), []
    client = threading.Thread(target=send_until, args=(base, sessions, stop, answers))
    client.start()
    try:
        time.sleep(1.0)
        yield answers
    finally:
        stop.set()
        client.join()


def check_answers(answers, by_version, sessions):
    assert answers and all(a[0] == 200 for a in answers), [a for a in answers if a[0] != 200][:3]
    for _, version, items, i in answers:
        assert items == by_version[version].recommend(sessions[i], 5)[0]    # the header names its model


def test_a_new_run_replaces_the_model_with_no_failed_request_and_a_misfit_is_refused(endpoint, other_runs):
    from rayrec.serve.app import ServeConfig, start

    base, old, sessions, _ = endpoint
    newer, misfit = other_runs
    new = Recommender(newer)
    with requests_through(base, sessions) as answers:
        start(newer, ServeConfig(port=int(base.rsplit(":", 1)[1]), num_replicas=2, max_batch_size=16,
                                 max_events=50, max_sessions=20))     # Serve's rolling update
        rolled = len(answers)
        time.sleep(2.0)
    check_answers(answers, {old.version: old, new.version: new}, sessions)
    versions = [a[1] for a in answers]
    assert versions[0] == old.version and versions[-1] == new.version
    assert old.version not in versions[rolled + 2:]       # once the update is done, only the new model answers
    with pytest.raises(ValueError, match="event fields"):
        start(misfit, ServeConfig(port=int(base.rsplit(":", 1)[1])))
    assert call(base + "/readyz")[2]["version"] == new.version                # still serving


def test_serve_watch_takes_the_newest_published_run_and_refuses_a_misfit(endpoint, other_runs, tmp_path):
    import shutil

    from ray import serve

    from rayrec.serve.app import APP, ServeConfig, endpoint as app_of

    base, _, sessions, run = endpoint
    newer, misfit = other_runs
    watched = tmp_path / "published"
    watched.mkdir()
    serve.run(app_of(newer, ServeConfig(num_replicas=2, max_events=50, max_sessions=20, watch=str(watched),
                                        watch_interval_s=0.3)), name=APP, route_prefix="/")
    served = Recommender(newer)
    with requests_through(base, sessions) as answers:
        shutil.copytree(run, watched / ".day-9.tmp")          # published as a run is: written, then renamed
        os.rename(watched / ".day-9.tmp", watched / "day-9")
        first = Recommender(str(watched / "day-9"))          # its version names the published directory
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not answers or answers[-1][1] != first.version):
            time.sleep(0.2)
        time.sleep(1.0)
    check_answers(answers, {served.version: served, first.version: first}, sessions)
    assert answers[0][1] == served.version and answers[-1][1] == first.version
    shutil.copytree(misfit, watched / "day-10")
    time.sleep(1.5)
    assert call(base + "/readyz")[2]["version"] == first.version             # the misfit was refused
