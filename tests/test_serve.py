"""The endpoint on a real Ray Serve, over HTTP on 127.0.0.1: two batching replicas answer
concurrent requests exactly as the in-process predictor does, every error is a 4xx of one
shape, overload is a 503 with Retry-After, and /metrics counts what was sent."""
import json
import threading
import time
import urllib.error
import urllib.request

import pytest

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


@pytest.fixture(scope="module")
def endpoint(served_run):
    import ray

    from rayrec.serve.app import ServeConfig, start, stop

    run, sessions = served_run
    port = free_port()
    ray.shutdown()       # a cluster left by an earlier test module
    start(run, ServeConfig(port=port, num_replicas=2, max_batch_size=16, batch_wait_timeout_s=0.005,
                           max_events=50, max_sessions=20))
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
    before = requests_counted(base)
    for _ in range(7):
        call(base + "/recommend", {"events": endpoint[2][1], "k": 2})
    call(base + "/recommend", raw=b"{oops")
    time.sleep(1.5)   # each replica sends its counts every 0.5 s
    status, headers, text = call(base + "/metrics")
    after = requests_counted(base)
    assert after.get(("/recommend", "200"), 0) - before.get(("/recommend", "200"), 0) == 7
    assert after.get(("/recommend", "400"), 0) - before.get(("/recommend", "400"), 0) == 1
    assert "rayrec_request_seconds_bucket" in text and "rayrec_batch_sessions_count" in text
    assert f'rayrec_model_info{{version="{headers["x-model-version"]}"}} 1' in text


def requests_counted(base):
    text = call(base + "/metrics")[2]
    out = {}
    for line in text.splitlines():
        if line.startswith("rayrec_requests_total{"):
            labels, value = line[len("rayrec_requests_total{"):].split("} ")
            d = dict(part.split("=") for part in labels.split(","))
            out[(d["route"].strip('"'), d["status"].strip('"'))] = int(value)
    return out


def test_overload_is_a_503_with_retry_after_and_the_endpoint_recovers(endpoint):
    from ray import serve

    from rayrec.serve.app import APP, ServeConfig, endpoint as app_of

    base, rec, sessions, run = endpoint
    tight = ServeConfig(num_replicas=1, max_ongoing_requests=1, max_queued_requests=1, max_events=50,
                        batching=False, retry_after_s=2)
    serve.run(app_of(run, tight), name=APP, route_prefix="/")
    try:
        got = [None] * 40

        def client(i):
            got[i] = call(base + "/recommend/batch", {"sessions": [{"events": sessions[j], "k": 50} for j in range(20)]})

        threads = [threading.Thread(target=client, args=(i,)) for i in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        codes = [g[0] for g in got]
        assert set(codes) <= {200, 503} and codes.count(503) > 0 and codes.count(200) > 0
        assert all(g[1].get("retry-after") == "2" for g in got if g[0] == 503)
        assert call(base + "/recommend", {"events": sessions[0], "k": 5})[2]["items"] == rec.recommend(sessions[0], 5)[0]
    finally:
        from rayrec.serve.app import ServeConfig as Cfg

        serve.run(app_of(run, Cfg(num_replicas=2, max_batch_size=16, max_events=50, max_sessions=20)),
                  name=APP, route_prefix="/")
