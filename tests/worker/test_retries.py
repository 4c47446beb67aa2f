"""Retries (issue 14, item 3): a task declared with ``retry_for`` goes RETRYING between attempts,
with ``attempt`` and ``next_attempt_at``, ``seq`` rising across attempts, and ends COMPLETED, or
FAILED with the last error once ``max_retries`` are used. Real worker, real socket."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.test_utils import TestClient

from tests.support import SocketClient, auth

Connect = Callable[[str], Awaitable[SocketClient]]


async def run_flaky(
    http: TestClient, sockets: Connect, fail_times: int
) -> tuple[SocketClient, str, dict[str, Any]]:
    """Submit ``demo.flaky`` for a new user with a socket; the socket, task id and final update."""
    who = f"r-{uuid.uuid4().hex[:6]}"
    client = await sockets(who)
    body = {"task": "demo.flaky", "input": {"fail_times": fail_times}}
    resp = await http.post("/api/tasks", json=body, headers=auth(who))
    assert resp.status == 202
    task_id = (await resp.json())["task_id"]
    return client, task_id, await client.wait_terminal(task_id, timeout=40)


async def test_flaky_goes_retrying_twice_then_completes_with_three_attempts(
    http: TestClient, sockets: Connect
) -> None:
    client, task_id, final = await run_flaky(http, sockets, fail_times=2)
    assert final["status"] == "COMPLETED", final
    assert final["result"] == {"attempts": 3} and final["attempt"] == 3
    events = client.events[task_id]
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs)), seqs  # rising across attempts, none twice
    retrying = [e for e in events if e["status"] == "RETRYING"]
    assert [e["attempt"] for e in retrying] == [2, 3]
    for e in retrying:
        assert e["next_attempt_at"] >= e["created_at"]
        assert e["error"]["type"] == "FlakyError"
        assert e["progress"]["percent"] == 0.0 and "of 6" in e["progress"]["message"]
    # Each attempt ran: RUNNING with attempt 1, 2, 3 (percent starting again each time).
    running = [e["attempt"] for e in events if e["status"] == "RUNNING"]
    assert sorted(set(running)) == [1, 2, 3]
    assert final["next_attempt_at"] is None


async def test_flaky_beyond_max_retries_ends_failed_with_the_last_error(
    http: TestClient, sockets: Connect
) -> None:
    client, task_id, final = await run_flaky(http, sockets, fail_times=7)
    assert final["status"] == "FAILED", final
    assert final["error"]["type"] == "FlakyError"
    assert "attempt 6 of 8" in final["error"]["message"]  # 1 run + max_retries (5) retries
    assert final["attempt"] == 6
    assert [e["attempt"] for e in client.events[task_id] if e["status"] == "RETRYING"] == [
        2,
        3,
        4,
        5,
        6,
    ]
