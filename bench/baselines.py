"""The baselines' servers, each run as its own process: ``python -m bench.baselines KIND``.

- ``celery_http``: the usual way, an aiohttp handler calling Celery's ``send_task`` through
  ``asyncio.to_thread`` (P1 a).
- ``bare_http``: an aiohttp handler that parses the same JSON and answers 202 (P1 b, the
  HTTP layer's ceiling).
- ``psio``: python-socketio's ``AsyncServer`` with ``AsyncRedisManager``; an external process
  emits (P3). Clients authenticate with the same tokens and join their user's room.
- ``bare_relay``: plain aiohttp websockets (``/ws?user=``) fed by a bare redis.asyncio + hiredis
  subscriber loop on taskgate's progress channel, one ``orjson`` encode per update (P3 ceiling,
  P4 floor, P5's bare websocket server).

All of them listen on ``BENCH_PORT``, run on uvloop like the gateway, and start the loop-lag
sampler of ``gateway.process.looplag`` when ``TASKGATE_LOOPLAG_FILE`` is set.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import orjson
from aiohttp import web

from bench.harness import raise_fd_limit
from gateway.process.looplag import start_from_env

ACCEPTED = b'{"status":"PENDING"}'


def _port() -> int:
    return int(os.environ["BENCH_PORT"])


def celery_http() -> web.Application:
    from shared.settings import Settings
    from worker.celery_app import make_celery

    settings = Settings.from_env()
    celery = make_celery(settings)

    async def submit(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        result = await asyncio.to_thread(
            celery.send_task, body["task"], kwargs=body.get("input") or {}, queue="fast"
        )
        return web.Response(
            body=orjson.dumps({"task_id": result.id, "status": "PENDING"}),
            status=202,
            content_type="application/json",
        )

    app = web.Application()
    app.router.add_post("/api/tasks", submit)
    return app


def bare_http() -> web.Application:
    async def submit(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        if not isinstance(body, dict) or "task" not in body:
            return web.Response(status=400)
        return web.Response(body=ACCEPTED, status=202, content_type="application/json")

    app = web.Application()
    app.router.add_post("/api/tasks", submit)
    return app


def psio() -> web.Application:
    import socketio

    from bench.publishers import PSIO_CHANNEL
    from gateway.auth import verify_token
    from shared.settings import Secret

    secret = Secret(os.environ["TASKGATE_SECRET"])
    mgr = socketio.AsyncRedisManager(os.environ["TASKGATE_REDIS_URL"], channel=PSIO_CHANNEL)
    sio = socketio.AsyncServer(
        async_mode="aiohttp", client_manager=mgr, ping_interval=20, ping_timeout=20
    )

    @sio.event  # type: ignore[misc]
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        identity = verify_token(secret, (auth or {}).get("token"))
        await sio.enter_room(sid, f"user:{identity.user}")

    app = web.Application()
    sio.attach(app)
    return app


def bare_relay() -> web.Application:
    from shared.keys import Keys
    from shared.redis_client import async_client

    users: dict[str, web.WebSocketResponse] = {}
    channel = Keys(os.environ["TASKGATE_KEY_PREFIX"]).progress_channel

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        user = request.query.get("user", "")
        users[user] = ws
        try:
            async for _ in ws:
                pass
        finally:
            if users.get(user) is ws:
                del users[user]
        return ws

    async def subscriber(app: web.Application) -> Any:
        client = async_client(os.environ["TASKGATE_REDIS_URL"])
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(channel)

        async def loop() -> None:
            dumps, loads = orjson.dumps, orjson.loads
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is None or message["type"] != "message":
                    continue
                update = loads(message["data"])
                ws = users.get(update["owner"])
                if ws is not None and not ws.closed:
                    frame = b"42" + dumps(["task", update["snapshot"]])
                    await ws.send_str(frame.decode())

        task = asyncio.create_task(loop())
        yield
        task.cancel()
        await pubsub.aclose()
        await client.aclose()

    app = web.Application()
    app.router.add_get("/ws", ws_handler)
    app.cleanup_ctx.append(subscriber)
    return app


KINDS = {"celery_http": celery_http, "bare_http": bare_http, "psio": psio, "bare_relay": bare_relay}


async def _serve(kind: str) -> None:
    sampler = start_from_env()
    app = KINDS[kind]()
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", _port()).start()
    try:
        await asyncio.Event().wait()
    finally:
        if sampler is not None:
            sampler.cancel()
        await runner.cleanup()


def main() -> None:
    raise_fd_limit()
    kind = sys.argv[1]
    try:
        import uvloop

        uvloop.run(_serve(kind))
    except ImportError:
        asyncio.run(_serve(kind))


if __name__ == "__main__":
    main()
