"""Security properties of issue 4 against real parts: tokens (aud/iss, expiry on sockets, the
secret at start), isolation between users, the submit rate and active quota, origins, and
workers that refuse pickle."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import pickle
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis
import redis.asyncio as aioredis
import socketio
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from gateway.auth import TokenRules, issue_token
from gateway.broker.redis_broker import RedisBroker, redis_priority
from gateway.broker.message import build_task_message
from shared.errors import ConfigError
from shared.settings import Secret, Settings
from tests.conftest import auth, make_token
from tests.support import (
    ROOT,
    SECRET,
    CeleryWorker,
    SocketClient,
    footprint,
    isolated_env,
    serve_gateway,
)

Connect = Callable[[str], Awaitable[SocketClient]]
ServerFactory = Callable[..., Awaitable[TestServer]]
COUNT = {"task": "demo.count", "input": {"steps": 1, "delay": 0}}


def user() -> str:
    return f"s-{uuid.uuid4().hex[:8]}"


async def start(aiohttp_server: ServerFactory, settings: Settings) -> tuple[TestServer, str]:
    server = await serve_gateway(aiohttp_server, settings)
    return server, str(server.make_url("/"))


# ---- tokens ----------------------------------------------------------------------------------


async def test_audience_and_issuer_are_checked_when_configured(
    env: dict[str, str], aiohttp_server: ServerFactory
) -> None:
    settings = Settings.from_env(
        isolated_env(env, TASKGATE_TOKEN_AUDIENCE="taskgate-api", TASKGATE_TOKEN_ISSUER="idp")
    )
    _, url = await start(aiohttp_server, settings)
    secret = Secret(SECRET)
    cases = [
        (issue_token(secret, "a"), 401, "token lacks the 'aud' claim"),
        (issue_token(secret, "a", rules=TokenRules("other", "idp")), 401,
         "token is for another audience"),
        (issue_token(secret, "a", rules=TokenRules("taskgate-api", "evil")), 401,
         "token is from another issuer"),
        (issue_token(secret, "a", rules=TokenRules("taskgate-api", None)), 401,
         "token lacks the 'iss' claim"),
        (issue_token(secret, "a", rules=TokenRules.from_settings(settings)), 200, None),
    ]  # fmt: skip
    async with aiohttp.ClientSession() as session:
        for token, status, message in cases:
            async with session.get(url + "api/tasks", headers=bearer(token)) as resp:
                assert resp.status == status
                if message:
                    assert (await resp.json())["error"]["message"] == message
    good = issue_token(secret, "a", rules=TokenRules.from_settings(settings))
    client = await SocketClient(url, good).connect()
    await client.close()
    refused = socketio.AsyncClient(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await refused.connect(url, auth={"token": cases[1][0]}, transports=["websocket"])
    await refused.disconnect()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_socket_is_disconnected_when_its_token_expires(
    env: dict[str, str], aiohttp_server: ServerFactory
) -> None:
    _, url = await start(aiohttp_server, Settings.from_env(isolated_env(env)))
    token = issue_token(Secret(SECRET), user(), ttl_s=1)
    expires_at = time.time() + 1
    client = await SocketClient(url, token).connect()
    gone = asyncio.Event()
    client.sio.on("disconnect", lambda *_: gone.set())
    async with asyncio.timeout(30):
        await gone.wait()
    # Within a minute of expiry (here: expiry plus the 5 s leeway).
    assert time.time() - expires_at < 60
    assert not client.sio.connected


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli.commands", *args], env=env, cwd=ROOT, capture_output=True,
        text=True, timeout=30, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    "secret, says",
    [
        (None, "taskgate: TASKGATE_SECRET: not set"),
        ("short-secret-31-bytes-xxxxxxxxx", "taskgate: TASKGATE_SECRET: must be at least 32"),
    ],
    ids=["missing", "31-bytes"],
)
def test_gateway_refuses_to_start_without_a_good_secret(
    env: dict[str, str], secret: str | None, says: str
) -> None:
    cli_env = {k: v for k, v in env.items() if k != "TASKGATE_SECRET"}
    if secret is not None:
        cli_env["TASKGATE_SECRET"] = secret
    out = run_cli(cli_env, "gateway")
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(says), out.stderr
    if secret is not None:
        assert secret not in out.stderr
    with pytest.raises(ConfigError):
        create_app(Settings.from_env(cli_env))


def test_secret_is_not_in_repr_of_settings(env: dict[str, str]) -> None:
    settings = Settings.from_env(env)
    assert SECRET not in repr(settings) and SECRET not in str(settings)
    assert settings.secret is not None and SECRET not in f"{settings.secret}"


async def test_secret_never_reaches_the_logs(
    env: dict[str, str], aiohttp_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = Settings.from_env(isolated_env(env, TASKGATE_LOG_LEVEL="DEBUG"))
    _, url = await start(aiohttp_server, settings)
    async with aiohttp.ClientSession() as session:
        for headers in ({}, bearer("x.y.z"), bearer(make_token(user()))):
            async with session.post(url + "api/tasks", json=COUNT, headers=headers):
                pass
    client = await SocketClient(url, make_token(user())).connect()
    await client.call("submit", {"task": "os.system"})
    await client.close()
    assert caplog.records
    assert SECRET not in caplog.text
    assert all(SECRET not in str(r.args) for r in caplog.records)


# ---- isolation -------------------------------------------------------------------------------


async def test_two_users_many_tasks_zero_crossed_updates(
    http: TestClient, sockets: Connect
) -> None:
    alice, bob = user(), user()
    a, b = await sockets(alice), await sockets(bob)
    a2 = await sockets(alice)  # a second tab of alice's
    owned: dict[str, set[str]] = {alice: set(), bob: set()}
    for i in range(12):
        who, client = (alice, a) if i % 2 == 0 else (bob, b)
        if i % 3 == 0:
            resp = await http.post("/api/tasks", json=COUNT, headers=auth(who))
            assert resp.status == 202
            owned[who].add((await resp.json())["task_id"])
        else:
            ack = await client.call("submit", COUNT)
            owned[who].add(ack["task_id"])
    for tid in owned[alice]:
        await a.wait_terminal(tid)
        await a2.wait_terminal(tid)
    for tid in owned[bob]:
        await b.wait_terminal(tid)
    crossed = [e for e in a.all_events + a2.all_events if e["task_id"] not in owned[alice]]
    crossed += [e for e in b.all_events if e["task_id"] not in owned[bob]]
    assert crossed == []
    # watch of the other user's tasks sends nothing
    before = len(b.all_events)
    ack = await b.call("watch", {"tasks": dict.fromkeys(owned[alice], 0)})
    assert ack == {"ok": True, "sent": 0}
    await asyncio.sleep(0.3)
    assert len(b.all_events) == before
    listed = await (await http.get("/api/tasks?limit=100", headers=auth(bob))).json()
    assert {t["task_id"] for t in listed["tasks"]} == owned[bob]


async def test_another_users_task_is_404_on_every_endpoint(
    http: TestClient, sockets: Connect
) -> None:
    alice, bob = user(), user()
    a = await sockets(alice)
    ack = await a.call("submit", COUNT)
    task_id = ack["task_id"]
    await a.wait_terminal(task_id)
    unknown = str(uuid.uuid4())
    routes = {
        (r.method, r.resource.canonical) for r in http.server.app.router.routes() if r.resource
    }
    calls = [("GET", "/api/tasks/{}"), ("DELETE", "/api/tasks/{}")]
    if ("GET", "/api/tasks/{task_id}/result") in routes:
        calls.append(("GET", "/api/tasks/{}/result?wait=0"))
    for method, path in calls:
        theirs = await http.request(method, path.format(task_id), headers=auth(bob))
        nobody = await http.request(method, path.format(unknown), headers=auth(bob))
        assert theirs.status == nobody.status == 404, path
        assert await theirs.json() == await nobody.json()
        assert theirs.headers.get("Content-Length") == nobody.headers.get("Content-Length")
    b = await sockets(bob)
    assert await b.call("cancel", {"task_id": task_id}) == await b.call(
        "cancel", {"task_id": unknown}
    )
    # bob's cancel changed nothing of alice's task
    snap = await (await http.get(f"/api/tasks/{task_id}", headers=auth(alice))).json()
    assert snap["status"] == "COMPLETED"


# ---- rate and quota --------------------------------------------------------------------------


async def test_submit_rate_is_a_bucket_shared_by_gateways(
    env: dict[str, str], aiohttp_server: ServerFactory
) -> None:
    shared_env = isolated_env(env, TASKGATE_SUBMIT_RATE="3")
    _, url1 = await start(aiohttp_server, Settings.from_env(shared_env))
    _, url2 = await start(aiohttp_server, Settings.from_env(shared_env))
    alice = user()
    async with aiohttp.ClientSession() as session:
        statuses = []
        for url in (url1, url2, url1, url2):
            async with session.post(url + "api/tasks", json=COUNT, headers=auth(alice)) as resp:
                statuses.append(resp.status)
                if resp.status == 429:
                    retry_after = int(resp.headers["Retry-After"])
                    body = await resp.json()
        assert statuses == [202, 202, 202, 429]
        assert 1 <= retry_after <= 2 and body["error"]["code"] == "rate_limited"
        # another user has a bucket of their own
        async with session.post(url2 + "api/tasks", json=COUNT, headers=auth(user())) as resp:
            assert resp.status == 202
        # the socket path draws from the same bucket
        client = await SocketClient(url2, make_token(alice)).connect()
        ack = await client.call("submit", COUNT)
        assert ack["error"]["code"] == "rate_limited"
        await client.close()
        await asyncio.sleep(retry_after)
        async with session.post(url1 + "api/tasks", json=COUNT, headers=auth(alice)) as resp:
            assert resp.status == 202


async def test_max_active_answers_429_and_records_nothing(
    env: dict[str, str], aiohttp_server: ServerFactory
) -> None:
    settings = Settings.from_env(isolated_env(env, TASKGATE_MAX_ACTIVE="2"))
    _, url = await start(aiohttp_server, settings)
    assert settings.redis_url is not None
    store = aioredis.Redis.from_url(settings.redis_url)
    alice = user()
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            async with session.post(url + "api/tasks", json=COUNT, headers=auth(alice)) as resp:
                assert resp.status == 202
        before = await footprint(store, settings.key_prefix)
        async with session.post(url + "api/tasks", json=COUNT, headers=auth(alice)) as resp:
            assert resp.status == 429
            assert int(resp.headers["Retry-After"]) >= 1
            assert (await resp.json())["error"]["code"] == "rate_limited"
        assert await footprint(store, settings.key_prefix) == before == {
            "records": 2, "broker_messages": 2,
        }  # fmt: skip
    await store.aclose()


# ---- origins ---------------------------------------------------------------------------------


@pytest.fixture
async def cors_gate(
    env: dict[str, str], aiohttp_server: ServerFactory
) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    settings = Settings.from_env(
        isolated_env(env, CORS_ALLOWED_ORIGINS="https://app.example, https://admin.example")
    )
    _, url = await start(aiohttp_server, settings)
    async with aiohttp.ClientSession() as session:
        yield url, session


async def test_cors_allows_only_configured_origins(
    cors_gate: tuple[str, aiohttp.ClientSession],
) -> None:
    url, session = cors_gate
    preflight = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    async with session.options(url + "api/tasks", headers=preflight) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]
        assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
    async with session.options(
        url + "api/tasks", headers={**preflight, "Origin": "https://evil.example"}
    ) as resp:
        assert resp.status == 403
        assert "Access-Control-Allow-Origin" not in resp.headers
    headers = {"Origin": "https://admin.example", **auth(user())}
    async with session.get(url + "api/tasks", headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == "https://admin.example"
    # errors carry the CORS headers too, so the page can read them
    async with session.get(url + "api/tasks", headers={"Origin": "https://app.example"}) as resp:
        assert resp.status == 401
        assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
    before = time.time()
    async with session.post(
        url + "api/tasks", json=COUNT, headers={"Origin": "https://evil.example", **auth(user())}
    ) as resp:
        assert resp.status == 403 and (await resp.json())["error"]["code"] == "forbidden_origin"
    assert time.time() - before < 5


async def test_socket_handshake_honours_configured_origins(
    cors_gate: tuple[str, aiohttp.ClientSession],
) -> None:
    url, session = cors_gate
    ws_url = url + "socket.io/?EIO=4&transport=websocket"
    ws = await session.ws_connect(ws_url, headers={"Origin": "https://app.example"})
    assert (await ws.receive(timeout=5)).data.startswith("0{")
    await ws.close()
    for origin in ("https://evil.example", url.rstrip("/")):  # same origin is not listed here
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await session.ws_connect(ws_url, headers={"Origin": origin})


async def test_default_is_same_origin_only(http: TestClient) -> None:
    own = f"http://127.0.0.1:{http.server.port}"
    resp = await http.get("/api/tasks", headers={"Origin": own, **auth(user())})
    assert resp.status == 200
    resp = await http.get("/api/tasks", headers={"Origin": "http://localhost:1", **auth(user())})
    assert resp.status == 403


# ---- JSON only on the broker -----------------------------------------------------------------


class _Exploit:
    """Unpickling this runs a shell command: the marker file proves whether it ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


async def test_worker_refuses_a_pickle_message(
    settings: Settings, celery_worker: CeleryWorker, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    task_id = str(uuid.uuid4())
    msg = build_task_message(task_id, "demo.count", "fast", kwargs={"steps": 1})
    envelope = orjson.loads(msg.redis_envelope(redis_priority(0)))
    envelope["body"] = base64.b64encode(
        pickle.dumps(((), {"steps": _Exploit(marker)}, {}), protocol=2)
    ).decode()
    envelope["content-type"] = "application/x-python-serialize"
    envelope["content-encoding"] = "binary"
    assert settings.redis_url is not None
    broker = RedisBroker(settings.redis_url, settings.keys.broker_prefix)
    key = broker.queue_key("fast", redis_priority(0))
    log_size = celery_worker.log.stat().st_size
    await broker.client.lpush(key, orjson.dumps(envelope))
    try:
        async with asyncio.timeout(20):
            while True:
                with celery_worker.log.open("rb") as fh:
                    fh.seek(log_size)
                    tail = fh.read()
                if b"application/x-python-serialize" in tail and (
                    b"Refusing to deserialize" in tail or b"ContentDisallowed" in tail
                ):
                    break
                await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        assert not marker.exists(), "the pickle payload ran"
        assert await broker.client.llen(key) == 0  # taken off the queue, not redelivered
        assert not await broker.client.exists(settings.keys.task(task_id))
    finally:
        await broker.close()


async def test_results_are_json_in_the_backend(settings: Settings, sockets: Connect) -> None:
    client = await sockets(user())
    ack = await client.call("submit", {"task": "demo.count", "input": {"steps": 2, "delay": 0}})
    final = await client.wait_terminal(ack["task_id"])
    assert final["result"] == {"counted": 2}
    assert settings.redis_url is not None
    url = settings.redis_url

    def read() -> tuple[bytes | None, bytes | None]:
        # In a thread: the gateway fixture forbids blocking calls on the loop.
        with redis.Redis.from_url(url) as store:
            meta = store.get(f"{settings.keys.broker_prefix}celery-task-meta-{ack['task_id']}")
            return meta, store.hget(settings.keys.task(ack["task_id"]), "result")

    meta, record = await asyncio.to_thread(read)
    if meta is not None:  # the Celery backend's copy, when the runner keeps one
        assert orjson.loads(meta)["status"] == "SUCCESS"
    assert record is not None and orjson.loads(record) == {"counted": 2}


def test_verified_token_cache_never_outlives_the_token() -> None:
    """HTTP remembers verified tokens briefly; an expired one is refused even if remembered,
    and a token that failed is never remembered."""
    import time as _time

    from gateway.auth import LEEWAY_S, TokenRules, VerifiedTokens, issue_token
    from shared.errors import AuthError
    from shared.settings import Secret
    from tests.support import SECRET

    tokens = VerifiedTokens(Secret(SECRET), TokenRules(), ttl_s=60.0)
    short = issue_token(Secret(SECRET), "cache-user", ttl_s=1)
    assert tokens.verify(short).user == "cache-user"
    assert tokens.verify(short).user == "cache-user"  # from the cache
    forged = short[:-2] + ("AA" if not short.endswith("AA") else "BB")
    for _ in range(2):
        with pytest.raises(AuthError, match="signature"):
            tokens.verify(forged)
    _time.sleep(1 + LEEWAY_S + 0.3)
    with pytest.raises(AuthError, match="expired"):
        tokens.verify(short)
