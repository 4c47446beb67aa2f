"""Completion webhooks against real parts: a gateway, a Celery worker, an aiohttp receiver.

The worker delivers (``worker.webhooks``); the receiver fails on purpose to prove the retries,
and checks every signature. SSRF refusals are checked at submit (422) and at delivery (an
allowed name that resolves to a loopback address).
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from gateway.appkeys import RELAY
from shared.records import CREATE_LUA, SyncRecords, create_call, new_record_fields
from shared.redis_client import sync_client
from shared.settings import Settings
from shared.status import TaskStatus
from shared.webhooks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookPolicy,
    verify,
    webhook_fields,
)
from tests.support import WEBHOOK_ENV, CeleryWorker, RedisServer, auth, base_env, started
from worker.webhooks import Delivery

WEBHOOK_SECRET = "webhook-secret-" + "y" * 32


def user() -> str:
    return f"u-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def env(redis_server: RedisServer) -> dict[str, str]:
    return base_env(
        redis_server.url,
        f"tgw-{uuid.uuid4().hex[:8]}:",
        **WEBHOOK_ENV,
        TASKGATE_WEBHOOK_SECRET=WEBHOOK_SECRET,
        TASKGATE_WEBHOOK_MAX_ATTEMPTS="4",
        TASKGATE_WEBHOOK_BACKOFF_MAX_S="0.5",
        TASKGATE_WEBHOOK_TIMEOUT_S="3",
    )


@pytest.fixture(scope="module")
def celery_worker(env: dict[str, str], log_dir: Path) -> Iterator[CeleryWorker]:
    with started(CeleryWorker(env, log_dir)) as worker:
        yield worker


class Receiver:
    """An HTTP endpoint that answers ``fail_status`` to the first ``fail_first`` calls."""

    def __init__(self) -> None:
        self.fail_first = 0
        self.fail_status = 500
        self.calls: list[tuple[dict[str, str], bytes, str]] = []
        self.url = ""
        self.called = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append((dict(request.headers), await request.read(), request.path_qs))
        self.called.set()
        if len(self.calls) <= self.fail_first:
            return web.Response(status=self.fail_status, text="not now")
        return web.Response(status=204)


@pytest.fixture
async def receiver(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Receiver:
    recv = Receiver()
    app = web.Application()
    app.router.add_post("/hook", recv.handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    recv.url = str(server.make_url("/hook"))
    return recv


async def _submit(http: TestClient, who: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = await http.post("/api/tasks", json=body, headers=auth(who))
    assert resp.status == 202, await resp.text()
    snap: dict[str, Any] = await resp.json()
    return snap


async def _settled(http: TestClient, who: str, task_id: str, timeout: float = 30) -> dict[str, Any]:
    """The snapshot once the webhook is delivered or failed."""
    async with asyncio.timeout(timeout):
        while True:
            resp = await http.get(f"/api/tasks/{task_id}", headers=auth(who))
            snap: dict[str, Any] = await resp.json()
            if snap["webhook"] and snap["webhook"]["state"] != "pending":
                return snap
            await asyncio.sleep(0.05)


async def _wait_status(http: TestClient, who: str, task_id: str, status: str) -> None:
    async with asyncio.timeout(20):
        while True:
            resp = await http.get(f"/api/tasks/{task_id}", headers=auth(who))
            if (await resp.json())["status"] == status:
                return
            await asyncio.sleep(0.05)


async def test_webhook_is_signed_and_retried_until_delivered(
    http: TestClient, receiver: Receiver
) -> None:
    alice = user()
    receiver.fail_first = 2
    url = receiver.url + "?source=test"
    sub = await _submit(
        http,
        alice,
        {"task": "demo.count", "input": {"steps": 2, "delay": 0}, "callback_url": url},
    )
    pending = {"state": "pending", "attempts": 0, "updated_at": None}
    assert sub["webhook"] == {"url": url, **pending, "last_status": None, "last_error": None}
    snap = await _settled(http, alice, sub["task_id"])
    hook = snap["webhook"]
    assert hook["state"] == "delivered" and hook["attempts"] == 3, hook
    assert hook["last_status"] == 204 and hook["last_error"] is None

    assert len(receiver.calls) == 3
    for n, (headers, body, path) in enumerate(receiver.calls, start=1):
        assert path == "/hook?source=test"
        assert headers["Content-Type"] == "application/json"
        assert verify(WEBHOOK_SECRET.encode(), body, headers[SIGNATURE_HEADER])
        assert not verify(b"another-secret", body, headers[SIGNATURE_HEADER])
        assert abs(int(headers[TIMESTAMP_HEADER]) - time.time()) < 60
        assert headers["X-Taskgate-Task-Id"] == sub["task_id"]
        assert headers["X-Taskgate-Attempt"] == str(n)
        sent = orjson.loads(body)
        assert sent["task_id"] == sub["task_id"] and sent["status"] == "COMPLETED"
        assert sent["result"] == {"counted": 2} and "webhook" not in sent
    # Terminal stays terminal; only the webhook field moved (and seq with it).
    assert snap["status"] == "COMPLETED" and snap["seq"] > 6


async def test_webhook_gives_up_after_the_attempt_limit(
    http: TestClient, receiver: Receiver
) -> None:
    alice = user()
    receiver.fail_first, receiver.fail_status = 1000, 503
    sub = await _submit(
        http,
        alice,
        {"task": "demo.fail", "input": {"message": "nope"}, "callback_url": receiver.url},
    )
    snap = await _settled(http, alice, sub["task_id"])
    assert snap["status"] == "FAILED"
    assert snap["webhook"]["state"] == "failed" and snap["webhook"]["attempts"] == 4
    assert snap["webhook"]["last_status"] == 503 and snap["webhook"]["last_error"] == "HTTP 503"
    await asyncio.sleep(1.0)  # longer than the capped backoff: no fifth attempt comes
    assert len(receiver.calls) == 4
    assert orjson.loads(receiver.calls[0][1])["error"]["message"] == "nope"


async def test_webhook_of_a_cancelled_task(http: TestClient, receiver: Receiver) -> None:
    alice = user()
    sub = await _submit(
        http,
        alice,
        {"task": "demo.sleep", "input": {"seconds": 30}, "callback_url": receiver.url},
    )
    task_id = sub["task_id"]
    await _wait_status(http, alice, task_id, "RUNNING")
    assert (await http.delete(f"/api/tasks/{task_id}", headers=auth(alice))).status == 202
    snap = await _settled(http, alice, task_id)
    assert snap["status"] == "CANCELLED" and snap["webhook"]["state"] == "delivered"
    assert orjson.loads(receiver.calls[-1][1])["status"] == "CANCELLED"


async def test_a_pending_retry_survives_a_worker_restart(
    redis_server: RedisServer,
    log_dir: Path,
    receiver: Receiver,
    aiohttp_client: Callable[..., Awaitable[TestClient]],
) -> None:
    """The retry waits in the broker (a Celery retry with a countdown), not in a process."""
    receiver.fail_first = 1
    env, http, alice, sub = await _hooked_task_apart(
        redis_server, aiohttp_client, receiver, TASKGATE_WEBHOOK_BACKOFF_S="4"
    )
    first = await asyncio.to_thread(CeleryWorker(env, log_dir).start)
    second: CeleryWorker | None = None
    try:
        await asyncio.wait_for(receiver.called.wait(), 20)
        async with asyncio.timeout(10):  # the failed attempt is recorded, the retry queued
            while True:
                resp = await http.get(f"/api/tasks/{sub['task_id']}", headers=auth(alice))
                if (await resp.json())["webhook"]["attempts"] == 1:
                    break
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        await asyncio.to_thread(first.stop)  # the retry is due in 2-4 s: it is still waiting
        assert len(receiver.calls) == 1
        second = await asyncio.to_thread(CeleryWorker(env, log_dir).start)
        snap = await _settled(http, alice, sub["task_id"])
        assert snap["webhook"]["state"] == "delivered" and snap["webhook"]["attempts"] == 2
        assert len(receiver.calls) == 2
    finally:
        await asyncio.to_thread(first.stop)
        if second is not None:
            await asyncio.to_thread(second.stop)


async def test_webhook_of_a_task_cancelled_while_queued(
    redis_server: RedisServer,
    log_dir: Path,
    receiver: Receiver,
    aiohttp_client: Callable[..., Awaitable[TestClient]],
) -> None:
    """The gateway ends a queued task; the worker that later takes its message sends the hook."""
    env, http, alice, sub = await _hooked_task_apart(redis_server, aiohttp_client, receiver)
    assert (await http.delete(f"/api/tasks/{sub['task_id']}", headers=auth(alice))).status == 202
    worker = await asyncio.to_thread(CeleryWorker(env, log_dir).start)  # no worker until now
    try:
        snap = await _settled(http, alice, sub["task_id"])
    finally:
        await asyncio.to_thread(worker.stop)
    assert snap["status"] == "CANCELLED" and snap["webhook"]["state"] == "delivered"
    assert orjson.loads(receiver.calls[0][1])["status"] == "CANCELLED"


async def test_tasks_without_callback_have_no_webhook(http: TestClient) -> None:
    alice = user()
    sub = await _submit(http, alice, {"task": "demo.count", "input": {"steps": 1, "delay": 0}})
    assert sub["webhook"] is None


async def test_the_delivery_task_cannot_be_submitted(http: TestClient) -> None:
    resp = await http.post(
        "/api/tasks", json={"task": "taskgate.webhook", "input": {}}, headers=auth(user())
    )
    assert resp.status == 422 and (await resp.json())["error"]["code"] == "unknown_task"


async def _hooked_task_apart(
    redis_server: RedisServer,
    aiohttp_client: Callable[..., Awaitable[TestClient]],
    receiver: Receiver,
    **extra: str,
) -> tuple[dict[str, str], TestClient, str, dict[str, Any]]:
    """A gateway on a key prefix of its own (no worker yet) and a task submitted to it with a
    callback to ``receiver``: the environment, the client, the owner and the submit's answer."""
    env = base_env(redis_server.url, f"tgh-{uuid.uuid4().hex[:8]}:", **{**WEBHOOK_ENV, **extra})
    http = await _started(aiohttp_client, Settings.from_env(env))
    alice = user()
    sub = await _submit(
        http, alice, {"task": "demo.count", "input": {"steps": 1}, "callback_url": receiver.url}
    )
    return env, http, alice, sub


async def _started(
    aiohttp_client: Callable[..., Awaitable[TestClient]], settings: Settings
) -> TestClient:
    """A gateway for ``settings``, once its relay is subscribed (a clean shutdown needs that)."""
    client = await aiohttp_client(create_app(settings))
    await asyncio.wait_for(client.app[RELAY].connected.wait(), 10)
    return client


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://hooks.example.com/x", "http"),
        ("file:///etc/passwd", "http"),
        ("http://evil.example.net/hook", "allowlist"),
        ("http://user:pw@hooks.example.com/", "credentials"),
        ("http://127.0.0.1:9/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data", "loopback"),
        ("http://10.1.2.3/hook", "loopback"),
        ("http://hooks.example.com:99999/", "valid URL"),
        ("x" * 3000, "characters"),
        (42, "characters"),
    ],
)
async def test_submit_refuses_disallowed_callback_urls(
    settings: Settings,
    aiohttp_client: Callable[..., Awaitable[TestClient]],
    url: Any,
    reason: str,
) -> None:
    strict = dataclasses.replace(
        settings,
        webhook_allow_private=False,
        webhook_allowed_hosts=(
            "hooks.example.com", "127.0.0.1", "::1", "::ffff:127.0.0.1", "169.254.169.254",
            "10.1.2.3",
        ),
    )  # fmt: skip
    client = await _started(aiohttp_client, strict)
    alice = user()
    body = {"task": "demo.count", "input": {"steps": 1}, "callback_url": url}
    resp = await client.post("/api/tasks", json=body, headers=auth(alice))
    error = (await resp.json())["error"]
    assert resp.status == 422 and error["details"]["field"] == "callback_url", error
    assert reason in error["message"]
    # Refused in a batch too, item by item; nothing was recorded.
    resp = await client.post("/api/tasks/batch", json={"tasks": [body]}, headers=auth(alice))
    assert resp.status == 202
    assert (await resp.json())["tasks"][0]["error"]["details"]["field"] == "callback_url"
    listed = await (await client.get("/api/tasks", headers=auth(alice))).json()
    assert listed == {"tasks": []}


async def test_no_allowlist_means_no_callbacks(
    settings: Settings, aiohttp_client: Callable[..., Awaitable[TestClient]]
) -> None:
    client = await _started(aiohttp_client, dataclasses.replace(settings, webhook_allowed_hosts=()))
    body = {"task": "demo.count", "input": {}, "callback_url": "https://hooks.example.com/"}
    resp = await client.post("/api/tasks", json=body, headers=auth(user()))
    assert resp.status == 422
    assert "no webhook hosts are allowed" in (await resp.json())["error"]["message"]


def test_delivery_rechecks_resolved_addresses(env: dict[str, str]) -> None:
    """An allowed *name* that resolves to loopback is refused when the webhook is delivered."""
    settings = dataclasses.replace(
        Settings.from_env(env), webhook_allow_private=False, webhook_allowed_hosts=("localhost",)
    )
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    port = listener.getsockname()[1]
    client = sync_client(env["TASKGATE_REDIS_URL"])
    try:
        records = SyncRecords(client, settings.keys, settings.retention_s)
        task_id = str(uuid.uuid4())
        url = f"http://localhost:{port}/hook"
        settings_policy = WebhookPolicy.from_settings(settings)
        settings_policy.check_url(url)  # accepted at submit: a name on the allowlist
        fields = new_record_fields(task_id, "demo.count", "fast", time.time(), webhook_fields(url))
        create = client.register_script(CREATE_LUA)
        call = create_call(settings.keys, "someone", fields, 0, 60)
        assert create(keys=call.keys, args=call.args)[0] == 1
        records.transition(task_id, "status", status=TaskStatus.COMPLETED)
        outcome, retry_in = Delivery(records, settings).attempt(task_id)
        assert (outcome, retry_in) == ("failed", None)
        snap = records.snapshot(task_id)
        assert snap is not None and snap["webhook"] is not None
        assert snap["webhook"]["state"] == "failed" and snap["webhook"]["attempts"] == 1
        assert "resolves to a disallowed address" in str(snap["webhook"]["last_error"])
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected
        # Delivered or failed is final: another attempt does nothing.
        assert Delivery(records, settings).attempt(task_id) == ("nothing to do", None)
    finally:
        listener.close()
        client.close()
