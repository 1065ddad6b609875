"""The HTTP contract: pydantic models of requests and answers, and the one error shape.

Every client error is `{"error": message, "field": where}` with a 4xx status, whatever
went wrong: a body that is not JSON, one nested past the parser's depth, a wrong type, a
number the model cannot take, an id list too long. The models are strict: an event's
values are scalars (no arrays, no objects), floats are finite, and unknown request fields
are errors, so a typo is never silently ignored.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, field_validator

Scalar = Union[StrictInt, StrictFloat, StrictStr, StrictBool, None]
ItemId = Union[StrictInt, StrictStr]
VERSION_HEADER = "X-Model-Version"


class Session(BaseModel):
    """One session to answer."""
    model_config = ConfigDict(extra="forbid")

    events: list[dict[str, Scalar]] = Field(min_length=1, description="the session's raw events, oldest first: "
                                            "each names the item id, and the time and side features the "
                                            "workflow reads")
    k: StrictInt = Field(10, ge=1, description="how many items to recommend")
    exclude_seen: StrictBool = Field(False, description="never recommend an item already in the session")
    include: list[ItemId] | None = Field(None, description="only these item ids may be recommended")
    exclude: list[ItemId] | None = Field(None, description="these item ids are never recommended")

    @field_validator("events")
    @classmethod
    def finite(cls, events):
        for i, event in enumerate(events):
            for key, value in event.items():
                if isinstance(value, float) and not math.isfinite(value):
                    raise ValueError(f"events[{i}].{key}: {value} is not a finite number")
        return events


class Batch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sessions: list[Session] = Field(min_length=1, description="sessions answered together, in order")


class Recommendation(BaseModel):
    items: list[ItemId] = Field(description="raw item ids, best first")
    scores: list[float] = Field(description="the model's score of each item")


class BatchRecommendation(BaseModel):
    results: list[Recommendation]


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    version: str = Field(description="the model's version: its run, the days it last trained on, and a digest")
    items: int = Field(description="items in the model's catalogue")
    threads: int = Field(description="torch threads this replica scores on")
    omp_wait: str = Field(description="how its idle torch threads wait (serve.omp_wait, as the replica "
                                      "started with it): spin N, or sleep")


class ErrorBody(BaseModel):
    error: str
    field: str | None = None


class ClientError(Exception):
    """A request the endpoint refuses: its status, message and the field at fault."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.field = status, field


@dataclass
class Hooks:
    """What the handlers below need from the replica they run in: each Endpoint holds its
    own (`hooks`), set once its model is loaded, so that errors raised before a route runs
    (FastAPI's validation, the body limit) carry the version and are counted too."""
    version: str = ""
    count: Callable[[str, int], None] | None = None    # (route, status) -> None
    busy: Callable[[], str | None] | None = None       # why a new request is refused now, if it is
    retry_after_s: int = 1
    max_body_bytes: int = 1 << 20


DEFAULT_HOOKS = Hooks()


def hooks() -> Hooks:
    """This replica's hooks (the Endpoint Serve runs here), or the defaults outside a replica."""
    try:
        from ray import serve

        return getattr(serve.get_replica_context().servable_object, "hooks", DEFAULT_HOOKS)
    except Exception:   # not inside a Serve replica (no context): nothing to count or tag
        return DEFAULT_HOOKS


def error(status: int, message: str, field: str | None = None, headers: dict | None = None) -> JSONResponse:
    headers = dict(headers or {})
    version = hooks().version
    if version:
        headers.setdefault(VERSION_HEADER, version)
    return JSONResponse({"error": message, "field": field}, status_code=status, headers=headers)


def counted(request: Request, response: JSONResponse) -> JSONResponse:
    count = hooks().count
    if count is not None:
        count(request.url.path, response.status_code)
    return response


def field_of(loc) -> str:
    """('body', 'sessions', 0, 'events', 3, 'product_id') -> 'sessions[0].events[3].product_id';
    the body itself (not an object, say) is 'body'."""
    out = ""
    for part in loc:
        if part == "body":
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


UNION_TAGS = {"int", "float", "str", "bool", "none"}


async def invalid(request: Request, exc: RequestValidationError):
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    kind, loc = first.get("type", ""), list(first.get("loc", ()))
    scalar = bool(loc) and loc[-1] in UNION_TAGS     # no member of a union fitted: name the field, not the member
    while loc and loc[-1] in UNION_TAGS:
        loc.pop()
    where = field_of(loc)
    if kind == "json_invalid":
        message, where = f"malformed JSON: {first.get('ctx', {}).get('error', first['msg'])}", "body"
    elif kind == "missing":
        message = f"missing field {where!r}"
    elif kind == "extra_forbidden":
        message = f"unknown field {where!r}"
    elif scalar:
        message = f"{where}: expected a number, a string, true/false or null, got {str(first.get('input'))[:80]}"
    else:
        message = f"{where}: {first['msg']}" if where else first["msg"]
    return counted(request, error(400, message, where))


async def refused(request: Request, exc: ClientError):
    return counted(request, error(exc.status, str(exc), exc.field))


async def http_error(request: Request, exc: StarletteHTTPException):
    field = "body" if exc.status_code in (400, 413) else None
    detail = "the body could not be parsed (not JSON, or nested too deeply)" \
        if exc.detail == "There was an error parsing the body" else str(exc.detail)
    return counted(request, error(exc.status_code, detail, field, getattr(exc, "headers", None)))


async def too_deep(request: Request, exc: RecursionError):
    return counted(request, error(400, "the JSON body is nested too deeply", "body"))


def new_api() -> FastAPI:
    """The FastAPI app with its error handlers; the deployment adds the routes. The
    handlers and middleware hold no state: each reads its replica's `hooks()`."""
    api = FastAPI(title="rayrec", description="Next-item recommendations for live sessions.",
                  responses={400: {"model": ErrorBody}, 413: {"model": ErrorBody}, 503: {"model": ErrorBody}})
    api.add_exception_handler(RequestValidationError, invalid)
    api.add_exception_handler(ClientError, refused)
    api.add_exception_handler(StarletteHTTPException, http_error)
    api.add_exception_handler(RecursionError, too_deep)
    api.add_middleware(BodyLimit)
    api.add_middleware(Admission)      # added last, so it runs first: a refusal reads no body
    return api


class Admission:
    """ASGI middleware: while the replica's scorer has more sessions waiting than it may
    hold (`hooks().busy` says why), a POST is answered 503 with Retry-After at once,
    before its body is read or parsed. Refusing here, in the replica, is cheap; holding a
    request back in Serve's proxy is not (its queue-length probes back off on busy cores,
    BENCHMARKS.md), so the replica takes all it is sent and sheds the excess itself."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        now = hooks()
        if scope["type"] == "http" and scope.get("method") == "POST" and now.busy is not None:
            reason = now.busy()
            if reason:
                response = error(503, reason, None, {"Retry-After": str(now.retry_after_s)})
                if now.count is not None:
                    now.count(scope.get("path", ""), 503)
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


class BodyLimit:
    """ASGI middleware: a body over `limit` bytes is a 413, whether its Content-Length says
    so or it streams past the limit, before any of it is parsed; and a POST body is read as
    JSON whatever its Content-Type. The limit is the replica's (serve.max_body_bytes)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = hooks().max_body_bytes
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"")
        if scope.get("method") == "POST" and b"json" not in headers.get(b"content-type", b""):
            # a body is JSON whatever its Content-Type says (`curl -d` sends a form type)
            scope = dict(scope, headers=[(k, v) for k, v in scope["headers"] if k != b"content-type"]
                         + [(b"content-type", b"application/json")])
        if declared.isdigit() and int(declared) > limit:
            return await error(413, f"request body is {int(declared)} bytes; the limit is {limit}", "body")(
                scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                from starlette.exceptions import HTTPException

                raise HTTPException(413, f"request body is over the limit of {limit} bytes")
            return message

        await self.app(scope, counted, send)
