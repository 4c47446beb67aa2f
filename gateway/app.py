"""The aiohttp app factory, with python-socketio's AsyncServer attached.

``create_app(settings)`` wires the records store, the broker, the task manager, the HTTP routes,
the Socket.IO handlers, and two background tasks started and stopped with the app: the relay
(pub/sub to rooms) and the heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import socketio
from aiohttp import web
from redis.exceptions import RedisError

from gateway.sockets import jsonlib
from gateway.appkeys import BROKER, FANOUT, MANAGER, RECORDS, RELAY, SETTINGS, SIO
from gateway.auth import TokenRules, VerifiedTokens
from gateway.broker.redis_broker import Broker, RedisBroker
from gateway.broker.factory import make_broker
from gateway.tasks.control import CeleryControl
from gateway.live.fanout import Fanout
from gateway.http.api import (
    TOKENS,
    add_routes,
    auth_middleware,
    errors_middleware,
    json_response,
)
from gateway.http.manage import add_manage_routes
from gateway.tasks.service import TaskManager
from gateway.http.metrics import METRICS, Metrics, count_requests, metrics_handler
from gateway.http.openapi import add_openapi_route
from gateway.http.origins import OriginPolicy
from gateway.broker.outbox import OutboxBroker, watch_outbox
from gateway.live.relay import Relay
from gateway.sockets.handlers import USER_ROOM, register_socket_handlers, user_room
from gateway.tasks.stalls import watch_stalls
from gateway.tasks.workflows import WorkflowNotifier
from shared.errors import BrokerUnavailable
from shared.records import AsyncRecords
from shared.redis_client import async_client
from shared.registry import load_task_modules
from shared.schema import Update
from shared.settings import Settings

log = logging.getLogger("taskgate.gateway")

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
INDEX_PAGE = WEB_DIR / "src" / "index.html"
SOCKETIO_CLIENT_DIR = WEB_DIR / "node_modules" / "socket.io-client" / "dist"
# Engine.IO pings every client each interval and drops one that has not answered within the
# timeout: a dead client (closed laptop, lost network) is reaped within 40 s.
PING_INTERVAL_S = 20
PING_TIMEOUT_S = 20
STORE_TIMEOUT_S = 3.0


def create_app(settings: Settings, *, broker: Broker | None = None) -> web.Application:
    """Build the gateway. ``broker`` replaces the one made from settings (benchmarks, tests)."""
    secret = settings.require_secret()
    redis_url = settings.require_redis()
    load_task_modules(settings.task_modules)
    origin_policy = OriginPolicy(settings.cors_allowed_origins)
    app = web.Application(
        middlewares=[
            count_requests,
            origin_policy.middleware(),
            errors_middleware,
            auth_middleware,
        ],
        client_max_size=settings.max_body_bytes,
    )
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[TOKENS] = VerifiedTokens(secret, TokenRules.from_settings(settings))
    # The same policy as HTTP CORS; python-engineio refuses a handshake from any other Origin.
    origins = origin_policy.engineio_check
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        cors_allowed_origins=origins,
        json=jsonlib,
        ping_interval=PING_INTERVAL_S,
        ping_timeout=PING_TIMEOUT_S,
        max_http_buffer_size=settings.max_body_bytes,
        # The contract's transport; long-polling would be a second parser to harden.
        transports=["websocket"],
    )
    sio.attach(app)
    app[SIO] = sio

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        client = async_client(
            redis_url, socket_timeout=STORE_TIMEOUT_S, socket_connect_timeout=STORE_TIMEOUT_S
        )
        records = AsyncRecords(client, settings.keys, settings.retention_s)
        app[RECORDS] = records
        the_broker = broker or make_broker(settings)
        outbox: OutboxBroker | None = None
        if isinstance(the_broker, RedisBroker) and settings.effective_broker_url == redis_url:
            # Brings back messages kombu's Redis transport loses in flight (gateway/redelivery.py).
            the_broker = outbox = OutboxBroker(the_broker, settings.keys)
        app[BROKER] = the_broker
        control = CeleryControl(settings)
        manager = TaskManager(settings, records, the_broker, control=control)
        app[MANAGER] = manager
        fanout = app[FANOUT] = Fanout(sio)
        register_socket_handlers(sio, manager, secret, fanout)

        async def emit_workflow(owner: str, snap: dict[str, Any]) -> None:
            await fanout.to_room(user_room(owner), "workflow", snap)

        notifier = WorkflowNotifier(manager.workflows, emit_workflow)

        async def deliver(update: Update) -> None:
            snap = update["snapshot"]
            manager.notify(snap)
            await fanout.to_room(user_room(update["owner"]), "task", snap)
            workflow_id = snap.get("workflow_id")
            if workflow_id:
                notifier.child_changed(update["owner"], workflow_id)

        async def resync() -> None:
            for room in fanout.rooms(USER_ROOM):
                for snap in await manager.live(room[len(USER_ROOM) :]):
                    manager.notify(snap)
                    await fanout.to_room(room, "task", snap)

        def listening(owner: str) -> bool:
            """Does any update of ``owner`` matter here: a socket of theirs in this process, or
            a ``wait_result`` (which may be theirs)? Else ``deliver`` would do nothing."""
            return manager.waiting or fanout.occupied(user_room(owner))

        relay = Relay(
            redis_url, settings.keys.progress_channel, deliver, resync, listening=listening
        )
        app[RELAY] = relay
        manager.relay = relay
        tasks = [
            asyncio.create_task(relay.run(), name="taskgate-relay"),
            asyncio.create_task(
                _heartbeat(fanout, settings.heartbeat_s), name="taskgate-heartbeat"
            ),
            asyncio.create_task(
                watch_stalls(records, settings.task_heartbeat_s), name="taskgate-stalls"
            ),
        ]
        if outbox is not None:
            sweep = max(1.0, min(10.0, settings.visibility_timeout / 4))
            tasks.append(
                asyncio.create_task(
                    watch_outbox(outbox, settings.queues, sweep), name="taskgate-outbox"
                )
            )
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await notifier.close()
            await manager.close()
            await the_broker.close()
            await client.aclose()

    app.cleanup_ctx.append(lifecycle)
    add_routes(app)
    add_openapi_route(app)
    add_manage_routes(app)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    # Looked up once here, not on the loop for every request.
    app.router.add_get("/", index if INDEX_PAGE.is_file() else no_web_client)
    if (WEB_DIR / "src").is_dir():
        app.router.add_static("/static", WEB_DIR / "src")
    if SOCKETIO_CLIENT_DIR.is_dir():
        app.router.add_static("/vendor/socket.io-client", SOCKETIO_CLIENT_DIR)
    return app


async def _heartbeat(fanout: Fanout, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await fanout.to_all("heartbeat", {"ts": time.time()})
        except Exception:
            log.exception("heartbeat emit failed")


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(STORE_TIMEOUT_S):
            await request.app[RECORDS].client.ping()
        checks["redis"] = "ok"
    except (RedisError, OSError, TimeoutError) as exc:
        checks["redis"] = f"unreachable: {type(exc).__name__}"
    try:
        await request.app[BROKER].ping()
        checks["broker"] = "ok"
    except BrokerUnavailable as exc:
        checks["broker"] = exc.message
    ok = all(v == "ok" for v in checks.values())
    return json_response(
        {"status": "ok" if ok else "unavailable", **checks}, status=200 if ok else 503
    )


async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(INDEX_PAGE, headers={"Cache-Control": "no-cache"})


async def no_web_client(request: web.Request) -> web.StreamResponse:
    return json_response(
        {"error": {"code": "not_found", "message": "web client not installed"}}, status=404
    )
