"""A Dask cluster hosted by a Ray cluster, for the ETL's run.

The ETL is written against Dask's distributed Client (scatter the workflow, map tasks
over pieces and buckets, gather reports), so on a Ray cluster rayrec runs Dask's own
scheduler and workers inside Ray actors rather than translating the pipeline to another
engine: a scheduler actor on the driver's node and one worker actor per Ray node, each
with a thread per CPU of its node. Dask's work stealing, retries and memory management
stay as they are, and the user starts no separate Dask cluster.

The Dask processes talk mutual TLS with a certificate made for this run
(`Security.temporary`), so nothing else on the cluster's network can join them or submit
work; the actors are killed when the run ends. They reserve no Ray CPU (the ETL is the
only work while it runs, and a job's entrypoint may hold CPUs that the workers would
otherwise wait for).
"""
from __future__ import annotations

import contextlib

import ray


@ray.remote(num_cpus=0)
class DaskScheduler:
    async def start(self, host: str, security) -> str:
        import logging

        from distributed import Scheduler

        logging.getLogger("distributed").setLevel(logging.ERROR)

        self.scheduler = await Scheduler(host=host, port=0, dashboard=False, dashboard_address=None,
                                         security=security, protocol="tls")
        return self.scheduler.address

    async def close(self) -> None:
        await self.scheduler.close()


@ray.remote(num_cpus=0)
class DaskWorker:
    async def start(self, scheduler: str, host: str, nthreads: int, security) -> str:
        import logging

        from distributed import Worker

        logging.getLogger("distributed").setLevel(logging.ERROR)
        self.worker = await Worker(scheduler, nthreads=nthreads, host=host, dashboard=False, security=security,
                                   protocol="tls", memory_limit=0, silence_logs=logging.ERROR)
        return self.worker.address

    async def close(self) -> None:
        await self.worker.close()


def _pinned(node_id: str):
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)


@contextlib.contextmanager
def dask_on_ray(address: str | None = None):
    """A distributed Client whose scheduler and workers are Ray actors (one worker per
    alive node with CPUs); everything started here is stopped on exit."""
    from distributed import Client
    from distributed.security import Security

    from rayrec.raylocal import init_ray

    started = not ray.is_initialized()
    init_ray(address)
    security = Security.temporary()
    here = ray.get_runtime_context().get_node_id()
    nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
    actors = []
    try:
        scheduler = DaskScheduler.options(scheduling_strategy=_pinned(here)).remote()
        actors.append(scheduler)
        host = next(n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == here)
        address = ray.get(scheduler.start.remote(host, security), timeout=120)
        workers = [DaskWorker.options(scheduling_strategy=_pinned(n["NodeID"])).remote() for n in nodes]
        actors += workers
        ray.get([w.start.remote(address, n["NodeManagerAddress"], int(n["Resources"]["CPU"]), security)
                 for w, n in zip(workers, nodes)], timeout=120)
        with Client(address, security=security) as client:
            client.wait_for_workers(len(workers), timeout=120)
            yield client
    finally:
        for a in reversed(actors):
            with contextlib.suppress(Exception):
                ray.get(a.close.remote(), timeout=10)
            ray.kill(a)
        if started:
            ray.shutdown()
