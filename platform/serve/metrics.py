"""The endpoint's own Prometheus metrics, summed over its replicas.

Why our own and not Ray's metrics export: a scraper then reads the endpoint's totals from
the endpoint's port (`GET /metrics`), with rayrec's labels (route, status, the model
version), and needs no Ray metrics agent, export port or Prometheus service discovery.
Each replica counts locally, on its event loop, and sends what changed to one
`MetricsStore` actor every `FLUSH_S`; `/metrics`, answered by any replica, flushes its own
counts first and then reads the sums. A replica's last counts before it is replaced
reach the store too, so a rolling update keeps the totals.

503s that Ray Serve's proxy sends itself (queue full) never reach a replica: they are in
Ray's own `ray_serve_num_http_error_requests_total`.
"""
from __future__ import annotations

import asyncio
from collections import defaultdict

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
FLUSH_S = 0.5


class Counts:
    """Counters and histograms as plain dicts: what changed since the last flush."""

    def __init__(self):
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency: dict[str, list] = {}       # route -> [bucket counts..., +Inf count, sum]
        self.batches: list = [0] * (len(BATCH_BUCKETS) + 2)
        self.queued: list = [0] * (len(LATENCY_BUCKETS) + 2)     # per session: waiting for the scorer
        self.scored: list = [0] * (len(LATENCY_BUCKETS) + 2)     # per batch: encode, score, decode

    def request(self, route: str, status: int, seconds: float) -> None:
        self.requests[(route, status)] += 1
        h = self.latency.setdefault(route, [0] * (len(LATENCY_BUCKETS) + 2))
        observe(h, LATENCY_BUCKETS, seconds)

    def batch(self, waits: list[float], seconds: float) -> None:
        """One batch: how long each of its sessions waited for the scorer, and how long it took."""
        observe(self.batches, BATCH_BUCKETS, len(waits))
        for w in waits:
            observe(self.queued, LATENCY_BUCKETS, w)
        observe(self.scored, LATENCY_BUCKETS, seconds)

    def take(self) -> dict:
        out = {"requests": [[r, s, n] for (r, s), n in self.requests.items()],
               "latency": self.latency, "batches": self.batches, "queued": self.queued, "scored": self.scored}
        self.__init__()
        return out

    def empty(self) -> bool:
        return not self.requests and not any(self.batches)


def observe(h: list, buckets, value: float) -> None:
    for i, edge in enumerate(buckets):
        if value <= edge:
            h[i] += 1
    h[-2] += 1          # +Inf
    h[-1] += value      # sum


class MetricsStore:
    """Ray actor: the sums over every replica of an app."""

    def __init__(self):
        self.counts = Counts()
        self.version = ""
        self.run = ""

    def serving(self, run: str, version: str) -> None:
        """The run a replica loaded last: what a refresh is checked against."""
        self.run, self.version = run, version

    def served(self) -> str:
        return self.run

    def add(self, delta: dict, version: str) -> None:
        for route, status, n in delta["requests"]:
            self.counts.requests[(route, status)] += n
        for route, h in delta["latency"].items():
            add_into(self.counts.latency.setdefault(route, [0] * (len(LATENCY_BUCKETS) + 2)), h)
        for name in ("batches", "queued", "scored"):
            add_into(getattr(self.counts, name), delta[name])
        self.version = version or self.version

    def text(self) -> str:
        return prometheus_text(self.counts, self.version)


def add_into(mine: list, delta: list) -> None:
    """One histogram's counts (and sum) added onto another's."""
    for i, v in enumerate(delta):
        mine[i] += v


def prometheus_text(c: Counts, version: str) -> str:
    lines = ["# HELP rayrec_requests_total Requests answered, by route and HTTP status.",
             "# TYPE rayrec_requests_total counter"]
    for (route, status), n in sorted(c.requests.items()):
        lines.append(f'rayrec_requests_total{{route="{route}",status="{status}"}} {n}')
    lines += ["# HELP rayrec_request_seconds Time to answer a request, in the replica.",
              "# TYPE rayrec_request_seconds histogram"]
    for route, h in sorted(c.latency.items()):
        lines += histogram("rayrec_request_seconds", h, LATENCY_BUCKETS, f'route="{route}",')
    lines += ["# HELP rayrec_batch_sessions Sessions scored together in one batch.",
              "# TYPE rayrec_batch_sessions histogram"]
    lines += histogram("rayrec_batch_sessions", c.batches, BATCH_BUCKETS, "")
    lines += ["# HELP rayrec_queue_seconds Time a session waited in the replica for the scorer.",
              "# TYPE rayrec_queue_seconds histogram"]
    lines += histogram("rayrec_queue_seconds", c.queued, LATENCY_BUCKETS, "")
    lines += ["# HELP rayrec_batch_seconds Time to answer one batch: encode, score, decode.",
              "# TYPE rayrec_batch_seconds histogram"]
    lines += histogram("rayrec_batch_seconds", c.scored, LATENCY_BUCKETS, "")
    lines += ["# HELP rayrec_model_info The model being served.", "# TYPE rayrec_model_info gauge",
              f'rayrec_model_info{{version="{version}"}} 1']
    return "\n".join(lines) + "\n"


def histogram(name: str, h: list, buckets, labels: str) -> list[str]:
    out = [f'{name}_bucket{{{labels}le="{edge:g}"}} {h[i]}' for i, edge in enumerate(buckets)]
    out += [f'{name}_bucket{{{labels}le="+Inf"}} {h[-2]}', f"{name}_sum{{{labels.rstrip(',')}}} {h[-1]:.6f}",
            f"{name}_count{{{labels.rstrip(',')}}} {h[-2]}"]
    return out


class ReplicaMetrics:
    """A replica's side: count locally, send the changes to the store now and then."""

    def __init__(self, store, version: str):
        self.store, self.version, self.counts = store, version, Counts()
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self.loop())

    async def loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            await self.flush()

    async def flush(self) -> None:
        if not self.counts.empty():
            await self.store.add.remote(self.counts.take(), self.version)

    async def text(self) -> str:
        await self.flush()
        return await self.store.text.remote()
