"""Starting or joining Ray the way every rayrec entry point does.

A local cluster binds loopback only: Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when it
is imported, and with it set to 0 every Ray process listens on 127.0.0.1 instead of all
interfaces. So `use_loopback()` must run before anything imports ray.
"""
from __future__ import annotations

import logging
import os
import socket


def use_loopback(address: str | None = None) -> None:
    """Call before importing ray when rayrec will start its own local cluster."""
    if not (address or os.environ.get("RAY_ADDRESS")):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


VERBOSE = {"on": False}


def show_library_logs() -> None:
    """`rayrec --verbose`: the libraries' INFO lines too, and Ray's worker prefixes."""
    VERBOSE["on"] = True
    logging.basicConfig(level=logging.INFO)
    for name in ("ray", "distributed", "transformers"):
        logging.getLogger(name).setLevel(logging.INFO)


def init_ray(address: str | None = None, num_cpus: int | None = None,
             object_store_memory: int | None = None, log_to_driver: bool = True) -> None:
    """Join `address` (or RAY_ADDRESS), else start a fresh local cluster on 127.0.0.1."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    # a job logging config makes Ray forward the workers' lines without its "(RayTrainWorker
    # pid=...)" prefix and colours, so a run's output reads as rayrec's report; the workers'
    # own loggers stop at WARNING
    quiet = None if VERBOSE["on"] else ray.LoggingConfig(encoding="TEXT", log_level="WARNING")
    level = logging.INFO if VERBOSE["on"] else logging.WARNING
    if address:
        check_reachable(address)
        ray.init(address=address, log_to_driver=log_to_driver, logging_level=level, logging_config=quiet)
        return
    # a private cluster of this process: Ray's notice that it turned token auth on is not the user's concern
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    ray.init(address="local", num_cpus=num_cpus, object_store_memory=object_store_memory,
             include_dashboard=True, dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1",
             log_to_driver=log_to_driver, logging_level=level, logging_config=quiet)


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
