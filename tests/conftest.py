"""Shared fixtures: a small synthetic dataset and its ETL output, built once per session.

Ray started by tests binds loopback: the variable below must be set before ray is imported.
"""
import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import pytest  # noqa: E402

from rayrec.etl import EtlConfig, default_workflow, run_etl  # noqa: E402
from rayrec.synth import SynthConfig, write  # noqa: E402

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")
SMALL = SynthConfig(events=30_000, days=4, items=300, seed=1)


@pytest.fixture(params=["c", "torch"])
def kernel_path(request):
    """Each test that takes it runs twice: on rayrec's C kernels and on their torch passes.
    Its value is `use_c`, as accel passes it (model.accel_kernels: auto or off)."""
    from rayrec.accel import kernels

    if request.param == "c" and kernels.library() is None:
        pytest.skip(f"C kernels {kernels.status()}")
    return request.param == "c"


def accelerated(module, use_c: bool = True, unpad: bool = True):
    """`module` and its submodules told what accel.apply tells a model's modules."""
    from rayrec.accel import Accel

    for m in module.modules():
        m.rayrec_accel = Accel(kernels=use_c, unpad=unpad)
    return module


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth")
    write(SMALL, str(d))
    return str(d)


@pytest.fixture(scope="session")
def etl_dir(synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("etl") / "data"
    etl([os.path.join(synth_dir, "events.parquet")], str(out))
    return str(out)


@pytest.fixture(scope="session")
def served_run(etl_dir, synth_dir, tmp_path_factory):
    """A small trained run, and raw sessions of its data as a client sends them (the item
    and time of each event): 100 sessions of at least 2 events."""
    import pyarrow.parquet as pq

    from rayrec.models.config import ModelConfig
    from rayrec.train.config import TrainConfig
    from rayrec.train.trainer import run_training

    run = str(tmp_path_factory.mktemp("served") / "run")
    run_training(etl_dir, run, ModelConfig(d_model=32, n_head=2, n_layer=1, max_len=8),
                 TrainConfig(workers=0, epochs=1, train_days="1:1"), quiet=True)
    events = pq.read_table(os.path.join(synth_dir, "events.parquet"),
                           columns=["user_session", "product_id", "event_time"]).slice(0, 8000).to_pylist()
    sessions = {}
    for e in events:
        sessions.setdefault(e["user_session"], []).append({"product_id": e["product_id"], "event_time": e["event_time"]})
    return run, [s for s in sessions.values() if len(s) >= 2][:100]


def etl(inputs, out, cfg=None, workflow=None, **kw):
    """run_etl with the default workflow for `cfg`, quietly."""
    cfg = cfg or EtlConfig()
    return run_etl(list(inputs), str(out), cfg, workflow or default_workflow(cfg), progress=lambda m: None, **kw)


def shared_path(*parts):
    path = os.path.abspath(os.path.join(SHARED, *parts))
    if not os.path.exists(path):
        pytest.skip(f"{path} not present (../shared is not beside this checkout)")
    return path
