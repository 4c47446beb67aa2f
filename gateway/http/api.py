"""The HTTP API (see the README's table): JSON in, JSON out, errors as ``{"error": {...}}``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from redis.exceptions import RedisError

from gateway.appkeys import SERVICE, SETTINGS
from gateway.auth import VerifiedTokens, bearer
from gateway.http.metrics import METRICS
from gateway.http.task_types import task_types
from shared import logs
from shared.errors import (
    AuthError,
    BadRequest,
    PayloadTooLarge,
    RequestTimeout,
    StoreUnavailable,
    TaskgateError,
)
from shared.registry import all_tasks
from shared.store_errors import store_unavailable
from shared.submission import traceparent_field
from shared.tracing import in_request, new_trace, span

log = logging.getLogger("taskgate.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
USER = web.RequestKey("user", str)
TOKENS = web.AppKey("tokens", VerifiedTokens)
# A client that sends its body slower than this is cut off: a stalled request holds no more than
# a coroutine and its buffer, but not forever.
BODY_TIMEOUT_S = 30.0
# Paths under /api/ that need no token: the API's own description.
PUBLIC_PATHS = frozenset({"/api/openapi.json"})
# The submits: each request is one trace (its ``traceparent`` header, else a new one), which
# all the tasks it submits share (``shared.tracing``).
SUBMIT_PATHS = frozenset({"/api/tasks", "/api/tasks/batch", "/api/workflows"})
TRACEPARENT = "traceparent"


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def query_number(
    request: web.Request, name: str, default: str, kind: Callable[[str], float], what: str
) -> float:
    """The query parameter ``name`` read with ``kind`` (``int``, ``float``); 400 naming ``what``
    (for example "an integer") when it is not one."""
    try:
        return kind(request.query.get(name, default))
    except ValueError:
        raise BadRequest(f"{name} must be {what}") from None


def error_response(exc: TaskgateError) -> web.Response:
    headers = {}
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, int(retry_after + 0.999)))
    return json_response(exc.to_dict(), status=exc.http_status, headers=headers)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes a JSON error; nothing a client sends can produce a traceback."""
    try:
        return await handler(request)
    except AuthError as exc:
        response = error_response(exc)
        response.headers["WWW-Authenticate"] = "Bearer"
        return response
    except TaskgateError as exc:
        if isinstance(exc, StoreUnavailable):
            request.app[METRICS].store_errors.labels("http").inc()
        return error_response(exc)
    except web.HTTPRequestEntityTooLarge:
        return error_response(PayloadTooLarge("request body too large"))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return json_response(
            {"error": {"code": code, "message": exc.reason}}, status=exc.status, headers=headers
        )
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except RedisError as exc:
        # A store failure a handler did not map itself: still the client's 503, never a 500.
        request.app[METRICS].store_errors.labels("http").inc()
        return error_response(store_unavailable(exc))
    except Exception:
        # A bug, not bad input; the client still gets JSON and never a traceback.
        log.exception("unhandled error on %s %s", request.method, request.path)
        request.app[METRICS].internal_errors.labels("http").inc()
        return json_response(
            {"error": {"code": "internal", "message": "internal error"}}, status=500
        )


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith("/api/") and request.path not in PUBLIC_PATHS:
        tokens = request.app[TOKENS]
        user = request[USER] = tokens.verify(bearer(request.headers.get("Authorization"))).user
        if request.method == "POST" and request.path in SUBMIT_PATHS:
            return await traced_submit(request, handler, user)
        with logs.bound(user=user):
            return await handler(request)
    return await handler(request)


async def traced_submit(request: web.Request, handler: Handler, user: str) -> web.StreamResponse:
    """A submit in its trace: the caller's ``traceparent`` (an invalid one is a 422 naming it),
    else a new one; with OpenTelemetry, inside a ``submit`` span that the tasks' publish spans
    hang under. Log lines meanwhile name the trace and the user."""
    raw = request.headers.get(TRACEPARENT)
    trace = traceparent_field(raw) if raw is not None else new_trace()
    with (
        span("submit", trace, attributes={"http.route": request.path}) as inner,
        in_request(inner),
        logs.bound(user=user, trace_id=trace.trace_id),
    ):
        return await handler(request)


async def read_json(request: web.Request) -> Any:
    """The request's JSON body: 400 if it is not JSON, 413 if it is over ``TASKGATE_MAX_BODY``.

    orjson refuses NaN and Infinity, integers beyond 64 bits and nesting deeper than 1024, all
    as malformed JSON. The size cap applies to chunked bodies too (aiohttp counts as it reads).
    """
    if request.content_type != "application/json":
        raise BadRequest("Content-Type must be application/json")
    limit = request.app[SETTINGS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(
            f"request body too large (limit {limit} bytes)", details={"limit": limit}
        )
    try:
        if request.content.is_eof():  # all of it arrived with the headers: nothing to wait for
            body = await request.read()
        else:
            async with asyncio.timeout(BODY_TIMEOUT_S):
                body = await request.read()
    except TimeoutError:
        raise RequestTimeout("request body not received in time") from None
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(
            f"request body too large (limit {limit} bytes)", details={"limit": limit}
        ) from None
    if not body:
        raise BadRequest("request body is empty")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc.msg}"[:200]) from None


async def submit_task(request: web.Request) -> web.Response:
    snap = await request.app[SERVICE].submit(request[USER], await read_json(request))
    if log.isEnabledFor(logging.DEBUG):
        log.debug("task %s (%s) accepted", snap["task_id"], snap["task"],
                  extra={"task_id": snap["task_id"]})  # fmt: skip
    return json_response(snap, status=202)


async def get_task(request: web.Request) -> web.Response:
    snap = await request.app[SERVICE].get(request[USER], request.match_info["task_id"])
    return json_response(snap)


async def list_tasks(request: web.Request) -> web.Response:
    limit = int(query_number(request, "limit", "50", int, "an integer"))
    status = request.query.get("status") or None
    snaps = await request.app[SERVICE].list_tasks(request[USER], status, limit)
    return json_response({"tasks": snaps})


async def cancel_task(request: web.Request) -> web.Response:
    snap = await request.app[SERVICE].cancel(request[USER], request.match_info["task_id"])
    return json_response(snap, status=202)


async def list_task_types(request: web.Request) -> web.Response:
    """Every task type a client may submit (``gateway.http.task_types``)."""
    types = task_types(all_tasks(), request.app[SETTINGS].routes)
    return json_response({"task_types": types})
