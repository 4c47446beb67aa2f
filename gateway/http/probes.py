"""``GET /healthz`` (the process answers) and ``GET /readyz`` (Redis and broker reachable)."""

from __future__ import annotations

from aiohttp import web

from gateway.appkeys import BROKER, RECORDS
from gateway.http.api import json_response
from gateway.tasks.health import readiness


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    checks = await readiness(request.app[RECORDS].client, request.app[BROKER])
    ok = all(v == "ok" for v in checks.values())
    return json_response(
        {"status": "ok" if ok else "unavailable", **checks}, status=200 if ok else 503
    )


def add_probe_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
