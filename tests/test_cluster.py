"""rayrec on a real two-host Ray cluster (two network namespaces, token auth, S3 beside the
head), driven through `rayrec submit` / `rayrec jobs` as a user would: the ETL and DDP
training on S3, a stopped job resumed to the uninterrupted result, token errors, and a
pipeline submitted as one job."""
import os
import re
import signal
import time

import pytest

from conftest import SMALL
from netcluster import NetnsCluster, netns_available

why = netns_available()
pytestmark = pytest.mark.skipif(why is not None, reason=f"two-host cluster test: {why}")

# epochs enough for a day to take seconds, so that a stop lands inside the run
TRAIN = ["--workers", "2", "--placement", "spread", "--train-days", "1:3", "--epochs", "15", "--batch-size", "64",
         "--seed", "5", "--arch", "gpt2", "--d-model", "32", "--n-head", "2", "--n-layer", "1"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with NetnsCluster(str(tmp_path_factory.mktemp("cluster"))) as c:
        synth = os.path.join(c.tmp, "raw")
        c.python(f"""
import json
from rayrec.storage import locate
from rayrec.synth import SynthConfig, write
import pyarrow.fs as pafs
pafs.S3FileSystem(endpoint_override={c.s3!r}, allow_bucket_creation=True).create_dir("rayrec")
write(SynthConfig(events={SMALL.events}, days={SMALL.days}, items={SMALL.items}, seed={SMALL.seed}), {synth!r})
locate("s3://rayrec/raw").upload({synth!r})
print(json.dumps(True))""")
        yield c


def submit(c, *args, **kw):
    wd = os.path.join(c.tmp, "wd")
    os.makedirs(wd, exist_ok=True)
    return c.run(["rayrec", "submit", "--address", c.dashboard, "--working-dir", wd, *args], **kw)


def s3_json(c, uri):
    return c.python(f"import json; from rayrec.storage import locate; print(json.dumps(locate({uri!r}).read_json()))")


def s3_listing(c, prefix):
    return c.python("import json; from rayrec.storage import locate; "
                    f"l = locate({prefix!r}); print(json.dumps([i.path for i in l.list(recursive=True)]))")


def test_etl_then_ddp_training_on_two_hosts_through_jobs(cluster):
    c = cluster
    etl = submit(c, "--", "rayrec", "etl", "--input", "s3://rayrec/raw/events.parquet", "--out", "s3://rayrec/data")
    assert etl.returncode == 0, etl.stdout + etl.stderr
    assert "submitted job" in etl.stdout and "events ->" in etl.stdout    # the job's log came back
    assert re.search(r"job \S+ SUCCEEDED", etl.stdout)
    report = s3_json(c, "s3://rayrec/data/report.json")
    assert report["sessions"] > 0

    train = submit(c, "--", "rayrec", "train", "--data", "s3://rayrec/data", "--out", "s3://rayrec/run", *TRAIN)
    assert train.returncode == 0, train.stdout + train.stderr
    assert "recall@20" in train.stdout
    metrics = s3_json(c, "s3://rayrec/run/metrics.json")
    assert [d["train_day"] for d in metrics["days"]] == [1, 2, 3]
    assert all(d["nodes"] == 2 and d["replicas_in_sync"] == 1 for d in metrics["days"])
    files = s3_listing(c, "s3://rayrec")
    assert "rayrec/run/checkpoint/model.safetensors" in files and "rayrec/run/_rayrec_complete.json" in files
    assert not [f for f in files if ".tmp-" in f]                        # no temporary prefix left


def test_a_stopped_job_keeps_its_checkpoint_and_resumes_to_the_same_result(cluster):
    c = cluster
    if not any("rayrec/run/metrics.json" == f for f in s3_listing(c, "s3://rayrec/run")):
        pytest.skip("needs the uninterrupted run of the test before")
    follow = c.popen(["rayrec", "submit", "--address", c.dashboard, "--", "rayrec", "train", "--data",
                      "s3://rayrec/data", "--out", "s3://rayrec/stopped", *TRAIN])
    lines, job = [], None
    deadline = time.monotonic() + 400
    for line in follow.stdout:               # the client streams the job's log as it comes
        lines.append(line)
        job = job or (re.search(r"submitted job (\S+)", line) or [None, None])[1]
        if "[rayrec] day 1:" in line or time.monotonic() > deadline:
            break
    assert job and "[rayrec] day 1:" in "".join(lines), "".join(lines)
    follow.send_signal(signal.SIGINT)        # Ctrl-C on the client detaches; the job goes on
    rest, _ = follow.communicate(timeout=60)
    assert follow.returncode == 130 and f"rayrec jobs stop {job}" in rest, rest
    status = c.run(["rayrec", "jobs", "status", job, "--address", c.dashboard])
    assert "RUNNING" in status.stdout, status.stdout + status.stderr
    stop = c.run(["rayrec", "jobs", "stop", job, "--address", c.dashboard], timeout=200)
    assert stop.returncode == 0 and "STOPPED" in stop.stdout, stop.stdout + stop.stderr
    log = c.run(["rayrec", "jobs", "logs", job, "--address", c.dashboard]).stdout
    assert "--resume s3://rayrec/stopped" in log                        # the resume command is in the log
    stopped = s3_json(c, "s3://rayrec/stopped/stopped.json")
    assert stopped["reason"] == "interrupted"
    assert not [f for f in s3_listing(c, "s3://rayrec") if ".tmp-" in f]

    resumed = submit(c, "--", "rayrec", "train", "--resume", "s3://rayrec/stopped", "--out", "s3://rayrec/resumed")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    whole, again = s3_json(c, "s3://rayrec/run/metrics.json"), s3_json(c, "s3://rayrec/resumed/metrics.json")
    assert [d["train_day"] for d in again["days"]] == [1, 2, 3]
    for key in ("recall@20", "ndcg@20", "mrr@20"):
        assert again["average"][key] == pytest.approx(whole["average"][key], abs=1e-6), key


def test_token_auth_without_or_with_a_wrong_token_says_how_to_pass_it(cluster):
    c = cluster
    none = c.run(["rayrec", "submit", "--address", c.dashboard, "--", "rayrec", "--help"], token=None)
    assert none.returncode == 2 and "requires an authentication token" in none.stderr
    assert "RAY_AUTH_TOKEN" in none.stderr and c.token not in none.stderr + none.stdout
    wrong = c.run(["rayrec", "jobs", "list", "--address", c.dashboard], token="0" * 64)
    assert wrong.returncode == 2 and "refused the authentication token" in wrong.stderr
    token_file = os.path.join(c.tmp, "token")
    with open(token_file, "w") as f:
        f.write(c.token)
    by_file = c.run(["rayrec", "jobs", "list", "--address", c.dashboard], token=None, RAY_AUTH_TOKEN_PATH=token_file)
    assert by_file.returncode == 0 and c.token not in by_file.stdout + by_file.stderr


def test_unreachable_cluster_names_the_address(cluster):
    c = cluster
    out = c.run(["rayrec", "submit", "--address", f"http://{c.ip[1]}:8265", "--", "rayrec", "--help"])
    assert out.returncode == 2 and f"http://{c.ip[1]}:8265" in out.stderr and "ray status" in out.stderr


def test_a_pipeline_submitted_as_one_job_skips_what_is_complete(cluster):
    c = cluster
    path = os.path.join(c.tmp, "pipeline.yaml")
    with open(path, "w") as f:
        f.write("name: on-the-cluster\nstages:\n"
                "  - etl: {input: [s3://rayrec/raw/events.parquet], out: s3://rayrec/data}\n"
                "  - evaluate: {run: s3://rayrec/run, data: s3://rayrec/data, days: '4'}\n")
    out = c.run(["rayrec", "submit", "--address", c.dashboard, path])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[1/2] etl: skipped" in out.stdout and "popularity" in out.stdout
    assert "all 2 stages done" in out.stdout


def test_serve_deploys_onto_the_cluster_detached_and_stop_removes_it(cluster, served_run):
    from rayrec.serve.predictor import Recommender

    c, (run, sessions) = cluster, served_run
    address, port = f"{c.ip[0]}:6379", 8123
    deploy = c.run(["rayrec", "serve", "--run", run, "--address", address, "--port", str(port)], timeout=300)
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    assert "--stop" in deploy.stdout                  # it returned, the endpoint stays on the cluster
    ask = f"""
import json, urllib.request
req = urllib.request.Request("http://127.0.0.1:{port}/recommend", data=json.dumps({{"events": {sessions[0]!r}, "k": 5}}).encode())
try:
    with urllib.request.urlopen(req, timeout=60) as r:
        print(json.dumps([r.status, json.loads(r.read())]))
except Exception as e:
    print(json.dumps([getattr(e, "code", 0), str(e)]))"""
    status, answer = c.python(ask)
    assert status == 200 and answer["items"] == Recommender(run).recommend(sessions[0], 5)[0]
    removed = c.run(["rayrec", "serve", "--stop", "--address", address], timeout=120)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert c.python(ask)[0] != 200
