"""Starting or joining Ray the way every rayrec entry point does, and the environment
variables rayrec's processes need, in one place.

Library code never writes os.environ: a variable set in the driver reaches no worker on
another node. What Ray's processes need travels in the job's `runtime_env` (built by
`runtime_env()`, passed to ray.init, so every actor and task on every node inherits it);
Dask workers get the same variables through their cluster's `env`. The CLI, which owns its
process, applies `cli_env()` to itself before anything imports Ray or Tune.

A local cluster binds loopback only: Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when it
is imported, and with it set to 0 every Ray process listens on 127.0.0.1 instead of all
interfaces (a Python caller sets it before importing ray, as tests/conftest.py does).
"""
from __future__ import annotations

import logging
import os
import socket

# variables every process that runs rayrec's work reads (workers, Serve replicas, Train's
# controller, Dask workers)
WORKER_ENV = {
    # pyarrow warns on every group-by over numpy-backed buffers (alignment is not a
    # correctness issue for the ETL's ops)
    "ACERO_ALIGNMENT_HANDLING": "ignore",
    # the tracker logs to an MLflow file store (train.mlflow), which MLflow 3 allows only so
    "MLFLOW_ALLOW_FILE_STORE": "true",
    # Ray Train's controller collects one report per worker per poll (default every 2 s) and
    # a report waits for it: measured 1.6-1.8 s per report at 2 s, 0.19 s at 0.2 s
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
}
# a private local cluster has no node to be preempted; Ray's watcher for it logs an error
# line at every start
LOCAL_CLUSTER_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
# read by the process that drives Ray Tune (the CLI's)
DRIVER_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",                    # Tune's new engine prints its tables even at verbose=0
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",   # a window without an evaluation day reports no metric
}


def runtime_env(local_cluster: bool, env: dict[str, str] | None = None) -> dict:
    """The runtime_env rayrec starts or joins Ray with: WORKER_ENV (and a caller's `env`,
    e.g. a sweep's OpenMP wait policy) for every process of the job, on every node."""
    return {"env_vars": {**WORKER_ENV, **(LOCAL_CLUSTER_ENV if local_cluster else {}), **(env or {})}}


def cli_env(address: str | None = None) -> dict[str, str]:
    """What the `rayrec` command sets in its own process (where unset) before importing Ray."""
    env = {**WORKER_ENV, **DRIVER_ENV}
    if not (address or os.environ.get("RAY_ADDRESS")):
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    return env


# whether the libraries' own INFO lines are wanted is the process's logging configuration,
# which its owner sets (`rayrec --verbose`, or a caller's logging.basicConfig(level=INFO))
LIBRARY_LOGS = "rayrec.libraries"


def show_library_logs() -> None:
    """`rayrec --verbose`: the libraries' INFO lines too, and Ray's worker prefixes."""
    logging.getLogger(LIBRARY_LOGS).setLevel(logging.INFO)
    logging.basicConfig(level=logging.INFO)
    for name in ("ray", "distributed", "transformers"):
        logging.getLogger(name).setLevel(logging.INFO)


def init_ray(address: str | None = None, num_cpus: int | None = None,
             object_store_memory: int | None = None, log_to_driver: bool = True,
             env: dict[str, str] | None = None) -> None:
    """Join `address` (or RAY_ADDRESS), else start a fresh local cluster on 127.0.0.1; both
    with rayrec's runtime_env (plus `env`)."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    # a job logging config makes Ray forward the workers' lines without its "(RayTrainWorker
    # pid=...)" prefix and colours, so a run's output reads as rayrec's report; the workers'
    # own loggers stop at WARNING
    verbose = logging.getLogger(LIBRARY_LOGS).isEnabledFor(logging.INFO)
    quiet = None if verbose else ray.LoggingConfig(encoding="TEXT", log_level="WARNING")
    level = logging.INFO if verbose else logging.WARNING
    if address:
        check_reachable(address)
        ray.init(address=address, log_to_driver=log_to_driver, logging_level=level, logging_config=quiet,
                 runtime_env=_joined_env(runtime_env(local_cluster=False, env=env)))
        return
    # a private cluster of this process: Ray's notice that it turned token auth on is not the user's concern
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    ray.init(address="local", num_cpus=num_cpus, object_store_memory=object_store_memory,
             include_dashboard=True, dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1",
             log_to_driver=log_to_driver, logging_level=level, logging_config=quiet,
             runtime_env=runtime_env(local_cluster=True, env=env))


def _joined_env(env: dict) -> dict:
    """Inside a Ray Job, the job's own runtime_env already holds some variables (Ray refuses
    to merge a key given twice): keep the job's."""
    import json

    injected = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not injected:
        return env
    taken = (json.loads(injected).get("runtime_env") or {}).get("env_vars") or {}
    return {"env_vars": {k: v for k, v in env["env_vars"].items() if k not in taken}}


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, naming the address, when nothing listens there (ray.init would wait
    for minutes). Only HOST:PORT addresses are checked; `auto` and ray:// are Ray's own."""
    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"Ray address {address!r}: expected HOST:PORT (the head's GCS port, 6379 by default)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return
    except OSError as e:
        raise ValueError(f"cannot reach the Ray cluster at {address} ({e}). Give the head node's address as "
                         "HOST:6379 (`ray status` on the head shows the cluster; the dashboard URL is printed by "
                         "`ray start --head`); inside a Ray job RAY_ADDRESS is set already") from None
