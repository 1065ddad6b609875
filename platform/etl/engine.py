"""Where the ETL runs: a local Dask cluster sized to the machine, an existing scheduler,
Dask hosted on a Ray cluster (`--address`, or RAY_ADDRESS as inside a Ray job; see
dask_on_ray.py), or dask-cuda workers with cuDF as Dask's dataframe backend (`--device gpu`).

The local cluster is one process with a thread per core: the ops spend their time in
numpy and pyarrow kernels that release the GIL, and threads start in a fraction of the
time worker processes take and share the fitted state without serialising it.

GPU status: `--device gpu` checks for cuDF and dask-cuda, starts one dask-cuda worker per
GPU and selects the cuDF backend, but the ops still compute with numpy/pyarrow on those
workers' host memory; cupy/cuDF kernels behind the same op code are not written yet (no
GPU has been available to develop and test them on).
"""
from __future__ import annotations

import contextlib
import os

GPU_HELP = ("--device gpu needs cuDF and dask-cuda on a machine with an NVIDIA GPU: "
            "pip install 'rayrec[gpu]' (CUDA 12 wheels from https://pypi.nvidia.com)")


def check_gpu() -> None:
    """Fail at once, before any work, when the GPU engine cannot run here."""
    try:
        import cudf  # noqa: F401
        import dask_cuda  # noqa: F401
    except ImportError as e:
        raise RuntimeError(f"{GPU_HELP} ({e})") from None


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, device: str = "cpu", workers: int | None = None,
                address: str | None = None):
    """A distributed Client for the run; a cluster started here is closed on exit. An
    explicit Dask `scheduler` wins; else a Ray `address` (or RAY_ADDRESS) hosts Dask on
    that Ray cluster; else a local cluster."""
    import dask
    from distributed import Client, LocalCluster

    if device == "gpu":
        check_gpu()
        from dask_cuda import LocalCUDACluster

        with dask.config.set({"dataframe.backend": "cudf"}):
            cluster = None if scheduler else LocalCUDACluster(ip="127.0.0.1", dashboard_address=None)
            with Client(scheduler or cluster) as client:
                yield client
            if cluster is not None:
                cluster.close()
        return
    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    if address or os.environ.get("RAY_ADDRESS"):
        from rayrec.etl.dask_on_ray import dask_on_ray

        with dask.config.set({"logging.distributed": "error"}), dask_on_ray(address) as client:
            yield client
        return
    from rayrec.threads import usable_cores

    n = workers or usable_cores()
    with dask.config.set({"distributed.worker.daemon": False, "logging.distributed": "error"}):
        with LocalCluster(n_workers=1, threads_per_worker=n, processes=False,
                          dashboard_address=None, silence_logs=40) as cluster, Client(cluster) as client:
            yield client
