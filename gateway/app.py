"""The server's composition root: the aiohttp app, with python-socketio's AsyncServer attached.

``create_app(settings)`` builds the HTTP routes and the Socket.IO server, and opens the
resources (``gateway.resources``) in ``cleanup_ctx``, one context per resource, in this order:

1. the records store (Redis);
2. the broker (with the outbox when it is the records' Redis);
3. the task service, and the Socket.IO handlers that use it;
4. the live path: the relay (pub/sub to rooms through the ``UpdateRouter``), the heartbeat and
   the workflow roll-ups;
5. maintenance: the stall watch and the outbox sweep.

aiohttp unwinds them in reverse on shutdown and collects the errors of each (``CleanupError``),
so one failing close does not leave the others open.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import socketio
from aiohttp import web

from gateway.appkeys import (
    BROKER,
    FANOUT,
    RECORDS,
    RELAY,
    SERVICE,
    SETTINGS,
    SIO,
    TASK_EVENTS,
)
from gateway.auth import TokenRules, VerifiedTokens
from gateway.broker.redis_broker import Broker
from gateway.http.api import TOKENS, auth_middleware, errors_middleware
from gateway.http.metrics import attach, count_requests, metrics_handler, watch_loop_lag
from gateway.http.openapi import add_openapi_route
from gateway.http.origins import OriginPolicy
from gateway.http.page import add_page_routes
from gateway.http.probes import add_probe_routes
from gateway.http.routes import add_api_routes
from gateway.live.fanout import Fanout, user_room
from gateway.live.heartbeat import heartbeat
from gateway.live.ledger import TaskEvents
from gateway.live.router import UpdateRouter
from gateway.live.workflow_rollup import WorkflowNotifier
from gateway.resources import (
    maintenance_jobs,
    make_relay,
    open_broker,
    open_records,
    open_service,
    running,
)
from gateway.sockets import jsonlib
from gateway.sockets.guard import check_internals
from gateway.sockets.handlers import register_socket_handlers
from shared.registry import load_task_modules
from shared.settings import Settings

# Engine.IO pings every client each interval and drops one that has not answered within the
# timeout: a dead client (closed laptop, lost network) is reaped within 40 s.
PING_INTERVAL_S = 20
PING_TIMEOUT_S = 20


def create_app(settings: Settings, *, broker: Broker | None = None) -> web.Application:
    """Build the gateway. ``broker`` replaces the one made from settings (benchmarks, tests)."""
    secret = settings.require_secret()
    settings.require_redis()
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
    metrics = attach(app)
    app[TOKENS] = VerifiedTokens(secret, TokenRules.from_settings(settings))
    # The same policy as HTTP CORS; python-engineio refuses a handshake from any other Origin.
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        cors_allowed_origins=origin_policy.engineio_check,
        json=jsonlib,
        ping_interval=PING_INTERVAL_S,
        ping_timeout=PING_TIMEOUT_S,
        max_http_buffer_size=settings.max_body_bytes,
        # The contract's transport; long-polling would be a second parser to harden.
        transports=["websocket"],
    )
    # The packet guard relies on python-socketio's internals: checked here, at creation.
    check_internals(sio)
    sio.attach(app)
    app[SIO] = sio
    app[FANOUT] = Fanout(sio)
    app[TASK_EVENTS] = TaskEvents(app[FANOUT])

    async def records_ctx(app: web.Application) -> AsyncIterator[None]:
        async with open_records(settings) as records:
            # The tasks this gateway ends (a cancel before they started) are counted here.
            records.observer = metrics.status_changed
            app[RECORDS] = records
            yield

    async def broker_ctx(app: web.Application) -> AsyncIterator[None]:
        async with open_broker(settings, broker) as the_broker:
            app[BROKER] = the_broker
            yield

    async def service_ctx(app: web.Application) -> AsyncIterator[None]:
        async with open_service(settings, app[RECORDS], app[BROKER]) as service:
            app[SERVICE] = service
            register_socket_handlers(
                sio,
                service,
                secret,
                app[TASK_EVENTS],
                on_bug=lambda: metrics.internal_errors.labels("socketio").inc(),
                on_event=metrics.socket_event,
                on_connect=lambda outcome: metrics.socket_connects.labels(outcome).inc(),
                on_store=lambda: metrics.store_errors.labels("socketio").inc(),
            )
            yield

    async def live_ctx(app: web.Application) -> AsyncIterator[None]:
        fanout, service = app[FANOUT], app[SERVICE]

        async def emit_workflow(owner: str, snap: dict[str, object]) -> None:
            await fanout.to_room(user_room(owner), "workflow", snap)

        notifier = WorkflowNotifier(service.workflows, emit_workflow)
        router = UpdateRouter(service, app[TASK_EVENTS], notifier, lag=metrics.delivery_lag.observe)
        relay = app[RELAY] = make_relay(settings, router)
        try:
            async with running(
                ("taskgate-relay", relay.run()),
                ("taskgate-heartbeat", heartbeat(fanout, settings.heartbeat_s)),
                ("taskgate-loop-lag", watch_loop_lag(metrics)),
            ):
                yield
        finally:
            await notifier.close()

    async def maintenance_ctx(app: web.Application) -> AsyncIterator[None]:
        async with running(*maintenance_jobs(settings, app[RECORDS], app[BROKER])):
            yield

    app.cleanup_ctx.extend([records_ctx, broker_ctx, service_ctx, live_ctx, maintenance_ctx])
    add_api_routes(app)
    add_openapi_route(app)
    app.router.add_get("/metrics", metrics_handler)
    add_probe_routes(app)
    add_page_routes(app)
    return app
