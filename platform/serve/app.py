"""`rayrec serve`: the predictor behind HTTP on Ray Serve, batched and scaled.

Routes (OpenAPI at /openapi.json, docs at /docs):
  POST /recommend        one session: {"events": [...], "k": 10, ...} -> {"items", "scores"}
  POST /recommend/batch  {"sessions": [...]} -> {"results": [...]}
  GET  /healthz          the replica is alive
  GET  /readyz           the model is loaded, with its version
  GET  /metrics          Prometheus text, summed over the replicas (metrics.py)
Every answer carries the model version in X-Model-Version. Errors are
{"error": ..., "field": ...} with a 4xx status (503 with Retry-After when overloaded).

Sessions from concurrent requests are scored together (batching.py: a batch forms when the
scorer is free), on one worker thread beside the event loop: health checks and request
parsing never wait for a batch.
"""
# no `from __future__ import annotations`: FastAPI reads the route annotations as types
import asyncio
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
from fastapi import Response
from fastapi.responses import PlainTextResponse
from ray import serve

from rayrec.serve.api import (VERSION_HEADER, Batch, BatchRecommendation, ClientError, Health, Hooks, Ready,
                              Recommendation, Session, error, new_api)
from rayrec.serve.batching import Batcher, timed
from rayrec.serve.config import ServeConfig
from rayrec.rundir import newest_run
from rayrec.serve.predictor import Query, Recommender, check_replaces
from rayrec.storage import is_uri
from rayrec.threads import wait_in_effect

APP = "rayrec"
api = new_api()


def model_error(e: Exception) -> ClientError:
    """A session the model cannot take (an id of the wrong type, a time out of range)."""
    message = str(e) or type(e).__name__
    for field in ("include", "exclude"):
        if message.startswith(f"{field}:") or f"'{field}'" in message:
            return ClientError(400, message, field)
    return ClientError(400, message, "events")


@serve.deployment(name="Endpoint")
@serve.ingress(api)
class Endpoint:
    def __init__(self, run_dir: str, cfg_json: str):
        import ray
        import torch

        from rayrec.serve.metrics import MetricsStore, ReplicaMetrics

        self.cfg = cfg = ServeConfig.from_json(cfg_json)
        torch.set_num_threads(cfg.replica_threads())
        self.threads = torch.get_num_threads()
        self.omp_wait = wait_in_effect()     # set in this replica's runtime_env (ServeConfig.deployment_options)
        self.device = "cuda" if cfg.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        self.recommender = Recommender(run_dir).to(self.device)
        self.run_dir = run_dir
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="rayrec-score")   # torch work, off the event loop
        app = serve.get_replica_context().app_name
        store = ray.remote(MetricsStore).options(name=f"rayrec-metrics-{app}", namespace="rayrec",
                                                 get_if_exists=True, lifetime="detached", num_cpus=0)
        self.store = store.remote()
        self.store.serving.remote(run_dir, self.version)
        self.metrics = ReplicaMetrics(self.store, self.version)
        # batching off: one session at a time, through the same queue
        self.batcher = Batcher(self.answer_batch, self.pool, cfg.max_batch_size if cfg.batching else 1,
                               cfg.batch_wait_timeout_s, self.observe)
        # what api.py's handlers and middleware read from this replica (api.hooks())
        self.hooks = Hooks(version=self.version, retry_after_s=cfg.retry_after_s, max_body_bytes=cfg.max_body_bytes,
                           count=lambda route, status: self.metrics.counts.request(route, status, 0.0),
                           busy=self.busy if cfg.max_waiting_sessions is not None else None)
        self.batch_waiting = 0     # sessions of /recommend/batch requests waiting for the scorer
        if cfg.watch:
            threading.Thread(target=self.watch, args=(cfg.watch, cfg.watch_interval_s), daemon=True,
                             name="rayrec-watch").start()

    @property
    def version(self) -> str:
        return self.recommender.version

    # --- refresh -------------------------------------------------------------------------
    def watch(self, directory: str, interval: float) -> None:
        """`serve.watch`: take the newest complete run published in `directory`. The new
        model is loaded beside the old one, which serves until the swap; a batch already
        scoring finishes on the model it started with. A run that does not fit (other event
        fields, ids of another type) is refused, and the old model keeps serving."""
        import logging

        log, refused = logging.getLogger("ray.serve"), set()
        while True:
            newest = newest_run(directory)
            if newest and os.path.abspath(newest) != os.path.abspath(self.run_dir) and newest not in refused:
                try:
                    new = Recommender(newest).to(self.device)
                    check_replaces(self.recommender, new)
                except Exception as e:   # whatever a published run holds, the watcher lives on
                    log.warning("rayrec: %s refused, still serving %s: %s", newest, self.version, e)
                    refused.add(newest)
                else:
                    self.recommender, self.run_dir = new, newest       # one reference: the swap is atomic
                    self.hooks.version = self.metrics.version = new.version
                    self.store.serving.remote(newest, new.version)
            time.sleep(interval)

    # --- scoring -------------------------------------------------------------------------
    async def score(self, queries: list[Query]) -> list[tuple[list, list[float], str]]:
        """One session joins the replica's batches; a request of many is scored as its own
        batch (so all its answers come from one model)."""
        if len(queries) == 1:
            return [await self.batcher.submit(queries[0])]
        queued = time.perf_counter()
        self.batch_waiting += len(queries)
        try:
            started, results, seconds = await asyncio.get_running_loop().run_in_executor(self.pool, timed,
                                                                                         self.answer, queries)
        finally:
            self.batch_waiting -= len(queries)
        self.observe([started - queued] * len(queries), seconds)
        return results

    def busy(self) -> str | None:
        """Why a new request is refused now, if it is: the scorer already has more sessions
        waiting than `max_waiting_sessions`, so a new one would wait past what it should."""
        waiting = len(self.batcher.waiting) + self.batch_waiting
        if waiting >= self.cfg.max_waiting_sessions:
            return f"overloaded: {waiting} sessions wait for this replica's scorer; retry later"
        return None

    def observe(self, waits: list[float], seconds: float) -> None:
        self.metrics.counts.batch(waits, seconds)

    def answer_batch(self, queries: list[Query]) -> list:
        """Sessions of concurrent requests, scored together; if one of them is bad, each is
        answered alone, so only that one fails."""
        try:
            return self.answer(queries)
        except ClientError:
            return [self.answer_or_error(q) for q in queries]

    def answer(self, queries: list[Query]) -> list:
        """(items, scores, version) per query, all from the model served when it began."""
        rec = self.recommender
        try:
            return [(items, scores, rec.version) for items, scores in rec.recommend_many(queries)]
        except (ValueError, OverflowError, pa.ArrowException) as e:
            raise model_error(e) from None

    def answer_or_error(self, query: Query):
        try:
            return self.answer([query])[0]
        except ClientError as e:
            return e

    def queries(self, sessions: list[Session]) -> list[Query]:
        cfg = self.cfg
        for i, s in enumerate(sessions):
            where = f"sessions[{i}]." if len(sessions) > 1 else ""
            if len(s.events) > cfg.max_events:
                raise ClientError(413, f"{len(s.events)} events; the limit is {cfg.max_events}", f"{where}events")
            if s.k > cfg.max_k:
                raise ClientError(400, f"k must be at most {cfg.max_k}, got {s.k}", f"{where}k")
        return [Query(s.events, s.k, s.exclude_seen, s.include, s.exclude) for s in sessions]

    async def answered(self, queries: list[Query]) -> list:
        try:
            results = await asyncio.wait_for(self.score(queries), self.cfg.request_timeout_s)
        except asyncio.TimeoutError:
            raise ClientError(503, f"no answer within {self.cfg.request_timeout_s} s", None) from None
        for r in results:
            if isinstance(r, ClientError):
                raise r
        return results

    # --- routes --------------------------------------------------------------------------
    @api.post("/recommend", response_model=Recommendation)
    async def recommend(self, body: Session, response: Response):
        started = time.perf_counter()
        try:
            (items, scores, version), = await self.answered(self.queries([body]))
        except ClientError as e:
            return self.refused("/recommend", started, e)
        return self.done("/recommend", started, response, {"items": items, "scores": scores}, version)

    @api.post("/recommend/batch", response_model=BatchRecommendation)
    async def recommend_batch(self, body: Batch, response: Response):
        started = time.perf_counter()
        try:
            if len(body.sessions) > self.cfg.max_sessions:
                raise ClientError(413, f"{len(body.sessions)} sessions; the limit is {self.cfg.max_sessions}",
                                  "sessions")
            results = await self.answered(self.queries(body.sessions))
        except ClientError as e:
            return self.refused("/recommend/batch", started, e)
        return self.done("/recommend/batch", started, response,
                         {"results": [{"items": i, "scores": s} for i, s, _ in results]}, results[0][2])

    @api.get("/healthz", response_model=Health)
    async def healthz(self, response: Response):
        self.metrics.start()
        response.headers[VERSION_HEADER] = self.version
        return {"status": "ok"}

    @api.get("/readyz", response_model=Ready)
    async def readyz(self, response: Response):
        self.metrics.start()
        response.headers[VERSION_HEADER] = self.version
        return {"status": "ready", "version": self.version, "items": self.recommender.catalogue_size,
                "threads": self.threads, "omp_wait": self.omp_wait}

    @api.get("/metrics", response_class=PlainTextResponse)
    async def metrics_text(self):
        return PlainTextResponse(await self.metrics.text(), headers={VERSION_HEADER: self.version},
                                 media_type="text/plain; version=0.0.4")

    def done(self, route: str, started: float, response: Response, body: dict, version: str) -> dict:
        self.metrics.start()
        self.metrics.counts.request(route, 200, time.perf_counter() - started)
        response.headers[VERSION_HEADER] = version        # the model that made this answer
        return body

    def refused(self, route: str, started: float, e: ClientError):
        self.metrics.start()
        self.metrics.counts.request(route, e.status, time.perf_counter() - started)
        headers = {VERSION_HEADER: self.version}
        if e.status == 503:
            headers["Retry-After"] = str(self.cfg.retry_after_s)
        return error(e.status, str(e), e.field, headers)


def endpoint(run_dir: str, cfg: ServeConfig):
    """The bound application for a run and a config."""
    run_dir = run_dir if is_uri(run_dir) else os.path.abspath(run_dir)
    return Endpoint.options(**cfg.deployment_options()).bind(run_dir, cfg.to_json())


def start(run_dir: str, cfg: ServeConfig, address: str | None = None, blocking: bool = False):
    """Deploy the endpoint on Ray Serve; returns once it is healthy (unless blocking)."""
    from rayrec.raylocal import init_ray

    import logging

    new = Recommender(run_dir)  # fail here, with the real error, rather than inside a replica
    logging.getLogger("ray.serve").setLevel(logging.INFO if cfg.access_log else logging.WARNING)
    init_ray(address)
    served = served_run()
    if served and served != (run_dir if is_uri(run_dir) else os.path.abspath(run_dir)):
        # a refresh of a running app: Serve's rolling update, if the new run fits
        check_replaces(Recommender(served), new)
    serve.start(http_options={"host": cfg.host, "port": cfg.port,
                              "request_timeout_s": cfg.request_timeout_s + 5},   # ours answers first
                logging_config={"enable_access_log": cfg.access_log,
                                "log_level": "INFO" if cfg.access_log else "WARNING"})
    if blocking:   # a container's stop (SIGTERM) ends the endpoint as Ctrl-C does, not with Ray's stack dump
        import signal

        def interrupt(signum, frame):
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, interrupt)
    serve.run(endpoint(run_dir, cfg), name=APP, route_prefix="/", blocking=blocking)


def served_run() -> str | None:
    """The run the running app (if any) serves, as its replicas last reported."""
    import ray

    try:
        return ray.get(ray.get_actor(f"rayrec-metrics-{APP}", namespace="rayrec").served.remote(), timeout=30) or None
    except (ValueError, ray.exceptions.GetTimeoutError):
        return None


def stop() -> None:
    """Remove the endpoint and Serve from the cluster this process started or joined."""
    kill_metrics()
    serve.shutdown()


def stop_with_ray() -> None:
    """End the endpoint with the private Ray cluster this process started: the cluster's
    shutdown takes Serve with it. (Serve's own shutdown, before it, leaves a raylet warning
    about its controller's retried shutdown task in the user's output.)"""
    import ray

    kill_metrics()
    ray.shutdown()


def remove(address: str | None) -> None:
    """`rayrec serve --stop`: delete the app from a running cluster (Serve stays up)."""
    from rayrec.raylocal import init_ray

    init_ray(address or os.environ.get("RAY_ADDRESS") or "auto", log_to_driver=False)
    serve.delete(APP)
    kill_metrics()


def kill_metrics() -> None:
    import ray

    try:
        ray.kill(ray.get_actor(f"rayrec-metrics-{APP}", namespace="rayrec"))
    except ValueError:
        pass


def serve_config(run_dir: str, cfg: ServeConfig) -> dict:
    """Ray Serve's declarative config of this endpoint: `serve deploy` and a KubeRay
    RayService's serveConfigV2 read it, and `build` below makes the app from its args."""
    from dataclasses import asdict

    run_dir = run_dir if is_uri(run_dir) else os.path.abspath(run_dir)
    return {"proxy_location": "EveryNode",
            "http_options": {"host": cfg.host, "port": cfg.port, "request_timeout_s": cfg.request_timeout_s + 5},
            "applications": [{"name": APP, "route_prefix": "/", "import_path": "rayrec.serve.app:build",
                              "args": {"run": run_dir, **asdict(cfg)},
                              "deployments": [{"name": "Endpoint", **cfg.deployment_options()}]}]}


def emit_config(run_dir: str, cfg: ServeConfig, path: str) -> None:
    import yaml

    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        yaml.safe_dump(serve_config(run_dir, cfg), f, sort_keys=False)
    os.replace(tmp, path)


def build(args: dict):
    """The app for a Serve config file (`import_path: rayrec.serve.app:build`, as a KubeRay
    RayService runs it): `args` holds `run` (a path or URI) and any ServeConfig field."""
    from rayrec.config_io import from_dict

    args = dict(args)
    run = args.pop("run", None)
    if not run:
        raise ValueError("serve app args: `run` (the run directory or its URI) is required")
    return endpoint(run, from_dict(ServeConfig, args, "serve app args"))


__all__ = ["APP", "ServeConfig", "build", "emit_config", "endpoint", "remove", "serve_config", "start", "stop",
           "stop_with_ray"]
