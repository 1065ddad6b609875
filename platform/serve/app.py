"""`rayrec serve`: the Recommender behind HTTP on Ray Serve.

POST /recommend {"events": [{<item col>: id, <time col>: t}, ...], "k": 10}
  -> {"items": [...raw ids...], "scores": [...]}
GET /healthz -> {"status": "ok", ...}
Bad requests get 400 with a message; bodies over `max_body_bytes` or sessions over
`max_events` events get 413. Binds 127.0.0.1 unless told otherwise.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from rayrec.serve.predictor import Recommender
from rayrec.storage import is_uri


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    max_events: int = 1000          # events per request; more -> 413
    max_body_bytes: int = 1 << 20   # request body; larger -> 413
    max_k: int = 1000
    threads: int = 1                # torch threads in the replica


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def parse_request(body: bytes, cfg: ServeConfig) -> tuple[list[dict], int]:
    """Validate a /recommend body; raise BadRequest naming the field that is wrong."""
    if len(body) > cfg.max_body_bytes:
        raise BadRequest(413, f"request body is {len(body)} bytes; the limit is {cfg.max_body_bytes}")
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(400, f"malformed JSON: {e}") from None
    if not isinstance(payload, dict) or "events" not in payload:
        raise BadRequest(400, 'missing field "events": expected {"events": [{...}, ...], "k": 10}')
    events = payload["events"]
    if not isinstance(events, list) or not events:
        raise BadRequest(400, '"events" must be a non-empty list of event objects')
    if len(events) > cfg.max_events:
        raise BadRequest(413, f'"events" has {len(events)} events; the limit is {cfg.max_events}')
    k = payload.get("k", 10)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= cfg.max_k:
        raise BadRequest(400, f'"k" must be an integer in [1, {cfg.max_k}], got {k!r}')
    return events, k


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
class RecommendEndpoint:
    def __init__(self, run_dir: str, cfg: ServeConfig):
        import torch

        torch.set_num_threads(cfg.threads)
        self.cfg = cfg
        self.recommender = Recommender(run_dir)
        self.run_dir = run_dir

    async def __call__(self, request: Request) -> JSONResponse:
        path = request.url.path.rstrip("/") or "/"
        if path == "/healthz" and request.method == "GET":
            return JSONResponse({"status": "ok", "run": self.run_dir, "items": self.recommender.catalogue_size})
        if path != "/recommend":
            return JSONResponse({"error": f"no route {request.method} {path}"}, status_code=404)
        if request.method != "POST":
            return JSONResponse({"error": "use POST /recommend"}, status_code=405)
        try:
            declared = int(request.headers.get("content-length") or 0)
            if declared > self.cfg.max_body_bytes:
                raise BadRequest(413, f"request body is {declared} bytes; the limit is {self.cfg.max_body_bytes}")
            events, k = parse_request(await request.body(), self.cfg)
            items, scores = self.recommender.recommend(events, k)
        except BadRequest as e:
            return JSONResponse({"error": str(e)}, status_code=e.status)
        except ValueError as e:  # an event the workflow cannot read (missing item id, bad time)
            return JSONResponse({"error": str(e)}, status_code=400)
        return JSONResponse({"items": items, "scores": scores})


def start(run_dir: str, cfg: ServeConfig, address: str | None = None, blocking: bool = False):
    """Deploy the endpoint on Ray Serve; returns once it is healthy (unless blocking)."""
    from rayrec.raylocal import init_ray

    run_dir = run_dir if is_uri(run_dir) else os.path.abspath(run_dir)
    Recommender(run_dir)  # fail here, with the real error, rather than inside a replica
    init_ray(address)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(RecommendEndpoint.bind(run_dir, cfg), name="rayrec", route_prefix="/", blocking=blocking)


def stop() -> None:
    serve.shutdown()


def build(args: dict):
    """The app for a Serve config file (`import_path: rayrec.serve.app:build`, as a KubeRay
    RayService runs it): `args` holds `run` (a path or URI) and any ServeConfig field."""
    from rayrec.config_io import from_dict

    args = dict(args)
    run = args.pop("run", None)
    if not run:
        raise ValueError("serve app args: `run` (the run directory or its URI) is required")
    return RecommendEndpoint.bind(run if is_uri(run) else os.path.abspath(run), from_dict(ServeConfig, args, "serve app args"))
