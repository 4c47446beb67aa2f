"""Delays and expiry (issue 14, item 4): ``countdown`` / ``eta`` hold a task PENDING with its
``eta`` until due (the message waits in Redis, not in the broker); ``expires`` ends a task that
did not start in time CANCELLED ``Expired``. Real gateway, real worker, real socket."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from aiohttp.test_utils import TestClient

from shared.redis_client import async_client
from shared.settings import Settings
from tests.support import SocketClient, auth

Connect = Callable[[str], Awaitable[SocketClient]]


def user() -> str:
    return f"d-{uuid.uuid4().hex[:6]}"


async def test_a_countdown_task_is_pending_with_its_eta_and_does_not_start_before_it(
    http: TestClient, sockets: Connect, settings: Settings
) -> None:
    who = user()
    client = await sockets(who)
    sent = time.time()
    body = {"task": "demo.count", "input": {"steps": 1, "delay": 0}, "countdown": 2}
    resp = await http.post("/api/tasks", json=body, headers=auth(who))
    assert resp.status == 202
    snap = await resp.json()
    assert snap["status"] == "PENDING" and abs(snap["eta"] - (sent + 2)) < 1.0
    # Held in Redis until due, not on the broker.
    store = async_client(str(settings.redis_url))
    try:
        assert await store.zscore(settings.keys.delayed, snap["task_id"]) is not None
    finally:
        await store.aclose()
    final = await client.wait_terminal(snap["task_id"], timeout=20)
    assert final["status"] == "COMPLETED"
    assert final["started_at"] >= snap["eta"] - 0.05, (final["started_at"], snap["eta"])


async def test_an_eta_in_iso_8601_is_honoured_and_bad_timing_is_422(
    http: TestClient, sockets: Connect
) -> None:
    who = user()
    client = await sockets(who)
    due = time.time() + 1.5
    eta = datetime.fromtimestamp(due, UTC).isoformat()
    body = {"task": "demo.count", "input": {"steps": 1, "delay": 0}, "eta": eta}
    resp = await http.post("/api/tasks", json=body, headers=auth(who))
    snap = await resp.json()
    assert resp.status == 202 and abs(snap["eta"] - due) < 0.01
    final = await client.wait_terminal(snap["task_id"], timeout=20)
    assert final["status"] == "COMPLETED" and final["started_at"] >= due - 0.05
    bad = [
        ({"countdown": -1}, "countdown"),
        ({"countdown": True}, "countdown"),
        ({"eta": "tomorrow"}, "eta"),
        ({"eta": eta, "countdown": 1}, "eta"),
        ({"countdown": 10, "expires": 5}, "expires"),
        ({"countdown": 10 * 86400 * 30}, "countdown"),
        # Past half of TASKGATE_RETENTION_S (default 1 day): the record could expire first.
        ({"countdown": 50_000}, "countdown"),
        ({"eta": datetime.fromtimestamp(time.time() + 50_000, UTC).isoformat()}, "eta"),
    ]
    for extra, field in bad:
        body = {"task": "demo.count", "input": {"steps": 1}, **extra}
        resp = await http.post("/api/tasks", json=body, headers=auth(who))
        assert resp.status == 422, extra
        assert (await resp.json())["error"]["details"]["field"] == field


async def test_a_task_that_expires_before_a_worker_takes_it_ends_cancelled_expired(
    http: TestClient, sockets: Connect
) -> None:
    """The worker's two slots are busy for 3 s; a task that expires after 1 s waits behind
    them and, when taken, is not run: CANCELLED with error.type Expired."""
    who = user()
    client = await sockets(who)
    busy = []
    for _ in range(2):
        body = {"task": "demo.sleep", "input": {"seconds": 3}}
        resp = await http.post("/api/tasks", json=body, headers=auth(who))
        busy.append((await resp.json())["task_id"])
    await client.wait_for(
        lambda: all(any(e["status"] == "RUNNING" for e in client.events[t]) for t in busy), 10
    )
    body = {"task": "demo.count", "input": {"steps": 1, "delay": 0}, "expires": 1}
    resp = await http.post("/api/tasks", json=body, headers=auth(who))
    assert resp.status == 202
    task_id = (await resp.json())["task_id"]
    final = await client.wait_terminal(task_id, timeout=20)
    assert final["status"] == "CANCELLED", final
    assert final["error"]["type"] == "Expired"
    assert final["started_at"] is None
    for t in busy:
        assert (await client.wait_terminal(t, timeout=20))["status"] == "COMPLETED"
