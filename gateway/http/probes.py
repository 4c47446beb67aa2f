"""``GET /healthz`` (the process answers) and ``GET /readyz`` (Redis and broker reachable, and
every configured queue consumed by a live worker)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from gateway.appkeys import BROKER, RECORDS, SERVICE, SETTINGS
from gateway.http.api import json_response
from gateway.tasks.health import PING_TIMEOUT_S, QueueWorkers, readiness
from shared.redis_client import server_problem
from shared.store_errors import STORE_FAILURES

QUEUE_WORKERS = web.AppKey("queue_workers", QueueWorkers)


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """503 unless Redis (a writable master, not a cluster node) and the broker answer and each
    of ``settings.queues`` has a live worker (``QueueWorkers``: the workers' own answer to an
    inspect, cached briefly). The body says what is wrong, and names the queues without a
    worker."""
    client = request.app[RECORDS].client
    checks: dict[str, Any] = dict(await readiness(client, request.app[BROKER]))
    if checks.get("redis") == "ok":
        # PING answers on a replica and on a cluster node too, where no submit can work.
        try:
            async with asyncio.timeout(PING_TIMEOUT_S):
                problem = await server_problem(client)
            if problem is not None:
                checks["redis"] = f"unusable: the server is {problem}"
        except STORE_FAILURES as exc:
            checks["redis"] = f"unreachable: {type(exc).__name__}"
    queue_workers = request.app.get(QUEUE_WORKERS)
    if queue_workers is not None:
        if checks.get("broker") == "ok":
            checks.update((await queue_workers.check()).describe())
        else:
            checks["workers"] = "unknown: the broker is unreachable"
    ok = all(v == "ok" for k, v in checks.items() if k != "queues_without_workers")
    return json_response(
        {"status": "ok" if ok else "unavailable", **checks}, status=200 if ok else 503
    )


async def _watch_queues(app: web.Application) -> None:
    # on_startup runs after every cleanup_ctx has opened its resource: the service is there.
    control = app[SERVICE].control
    if control is not None:
        app[QUEUE_WORKERS] = QueueWorkers(control, app[SETTINGS].queues)


def add_probe_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.on_startup.append(_watch_queues)
