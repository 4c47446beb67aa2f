"""The whole path against real parts: HTTP and Socket.IO submit, a real worker, live updates."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.test_utils import TestClient

from tests.support import SocketClient, auth

Connect = Callable[[str], Awaitable[SocketClient]]


def user() -> str:
    return f"u-{uuid.uuid4().hex[:8]}"


def assert_ordered(events: list[dict[str, object]]) -> None:
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
    pcts = [e["progress"]["percent"] for e in events]  # type: ignore[index]
    assert pcts == sorted(pcts), pcts


async def in_order_updates(client: SocketClient, task_id: str) -> list[dict[str, Any]]:
    """Every update of ``task_id`` as the socket got them, checked to be in order from PENDING."""
    await client.wait_terminal(task_id)
    events = client.events[task_id]
    assert_ordered(events)
    assert [e["status"] for e in events][:2] == ["PENDING", "RUNNING"]
    assert events[0]["seq"] == 1
    return events


async def check_http_submit(
    http: TestClient,
    sockets: Connect,
    updates: Callable[[SocketClient, str], Awaitable[list[dict[str, Any]]]],
) -> None:
    """An HTTP submit runs to COMPLETED; ``updates`` gathers and checks the socket's updates."""
    alice = user()
    client = await sockets(alice)
    resp = await http.post(
        "/api/tasks",
        json={"task": "demo.count", "input": {"steps": 5, "delay": 0.05}},
        headers=auth(alice),
    )
    assert resp.status == 202
    body = await resp.json()
    assert body["status"] == "PENDING" and body["seq"] == 1
    task_id = body["task_id"]

    events = await updates(client, task_id)
    # PENDING, RUNNING, five progress steps, COMPLETED: seq 1..8, none missing (``updates``
    # says whether the PENDING update may be left out: see the RabbitMQ tests).
    assert [e["seq"] for e in events if e["seq"] > 1] == list(range(2, 9))
    final = events[-1]
    assert final["status"] == "COMPLETED" and final["result"] == {"counted": 5}
    polled = await (await http.get(f"/api/tasks/{task_id}", headers=auth(alice))).json()
    assert polled == final
    listed = await (await http.get("/api/tasks", headers=auth(alice))).json()
    assert [t["task_id"] for t in listed["tasks"]] == [task_id]


async def test_http_submit_runs_to_completion_with_ordered_updates(
    http: TestClient, sockets: Connect
) -> None:
    await check_http_submit(http, sockets, in_order_updates)


async def test_socket_submit_gets_ack_and_every_update(sockets: Connect) -> None:
    client = await sockets(user())
    # 60 ms a step: slower than the workers' progress rate (20/s), so every step is published.
    body = {"task": "demo.count", "input": {"steps": 3, "delay": 0.06}}
    ack = await client.call("submit", body)
    assert set(ack) >= {"task_id"} and "error" not in ack
    final = await client.wait_terminal(ack["task_id"])
    assert final["status"] == "COMPLETED" and final["result"] == {"counted": 3}
    assert [e["seq"] for e in client.events[ack["task_id"]]] == list(range(1, 7))


async def test_failing_task_ends_failed_with_its_message(sockets: Connect) -> None:
    client = await sockets(user())
    ack = await client.call(
        "submit", {"task": "demo.fail", "input": {"message": "boom", "after": 2}}
    )
    final = await client.wait_terminal(ack["task_id"])
    assert final["status"] == "FAILED"
    assert final["error"] == {"type": "DemoFailure", "message": "boom"}
    assert final["result"] is None
    assert_ordered(client.events[ack["task_id"]])


async def test_cancel_running_sleep_ends_cancelled(http: TestClient, sockets: Connect) -> None:
    alice = user()
    client = await sockets(alice)
    ack = await client.call("submit", {"task": "demo.sleep", "input": {"seconds": 30}})
    task_id = ack["task_id"]
    await client.wait_for(lambda: any(e["status"] == "RUNNING" for e in client.events[task_id]))
    resp = await http.delete(f"/api/tasks/{task_id}", headers=auth(alice))
    assert resp.status == 202
    final = await client.wait_terminal(task_id, timeout=10)
    assert final["status"] == "CANCELLED"
    # A terminal status never changes again.
    await asyncio.sleep(0.5)
    assert client.events[task_id][-1]["status"] == "CANCELLED"


async def test_cancel_over_socket(sockets: Connect) -> None:
    client = await sockets(user())
    ack = await client.call("submit", {"task": "demo.sleep", "input": {"seconds": 30}})
    await client.wait_for(
        lambda: any(e["status"] == "RUNNING" for e in client.events[ack["task_id"]])
    )
    assert await client.call("cancel", {"task_id": ack["task_id"]}) == {"ok": True}
    assert (await client.wait_terminal(ack["task_id"], timeout=10))["status"] == "CANCELLED"
