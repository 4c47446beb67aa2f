"""The whole path against real parts: HTTP and Socket.IO submit, a real worker, live updates."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

from aiohttp.test_utils import TestClient

from tests.conftest import auth
from tests.support import SocketClient

Connect = Callable[[str], Awaitable[SocketClient]]


def user() -> str:
    return f"u-{uuid.uuid4().hex[:8]}"


def assert_ordered(events: list[dict[str, object]]) -> None:
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
    pcts = [e["progress"]["percent"] for e in events]  # type: ignore[index]
    assert pcts == sorted(pcts), pcts


async def test_http_submit_runs_to_completion_with_ordered_updates(
    http: TestClient, sockets: Connect
) -> None:
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

    final = await client.wait_terminal(task_id)
    assert final["status"] == "COMPLETED"
    assert final["result"] == {"counted": 5}
    events = client.events[task_id]
    assert_ordered(events)
    # PENDING, RUNNING, five progress steps, COMPLETED: seq 1..8, none missing.
    assert [e["seq"] for e in events] == list(range(1, 9))
    assert [e["status"] for e in events][:2] == ["PENDING", "RUNNING"]

    polled = await (await http.get(f"/api/tasks/{task_id}", headers=auth(alice))).json()
    assert polled == final
    listed = await (await http.get("/api/tasks", headers=auth(alice))).json()
    assert [t["task_id"] for t in listed["tasks"]] == [task_id]


async def test_socket_submit_gets_ack_and_every_update(sockets: Connect) -> None:
    client = await sockets(user())
    ack = await client.call("submit", {"task": "demo.count", "input": {"steps": 3, "delay": 0}})
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


async def test_other_user_sees_nothing_and_gets_404(http: TestClient, sockets: Connect) -> None:
    alice, bob = user(), user()
    a, b = await sockets(alice), await sockets(bob)
    ack = await a.call("submit", {"task": "demo.count", "input": {"steps": 3, "delay": 0.02}})
    task_id = ack["task_id"]
    await a.wait_terminal(task_id)
    for method in ("get", "delete"):
        resp = await http.request(method, f"/api/tasks/{task_id}", headers=auth(bob))
        assert resp.status == 404
        unknown = await http.request(method, f"/api/tasks/{uuid.uuid4()}", headers=auth(bob))
        assert (await resp.json()) == (await unknown.json())
    assert await b.call("cancel", {"task_id": task_id}) == (await unknown.json())
    assert await b.call("watch", {"tasks": {task_id: 0}}) == {"ok": True, "sent": 0}
    listed = await (await http.get("/api/tasks", headers=auth(bob))).json()
    assert listed == {"tasks": []}
    assert b.all_events == []


async def test_connect_sends_live_snapshots_and_watch_catches_up(
    http: TestClient, sockets: Connect
) -> None:
    alice = user()
    resp = await http.post(
        "/api/tasks",
        json={"task": "demo.count", "input": {"steps": 2, "delay": 0}},
        headers=auth(alice),
    )
    task_id = (await resp.json())["task_id"]
    first = await sockets(alice)
    await first.wait_terminal(task_id)
    # A client that connects later gets the snapshot of the task that just ended.
    late = await sockets(alice)
    final = await late.wait_terminal(task_id)
    assert final["status"] == "COMPLETED"
    # watch with an old seq resends the current snapshot; with the current seq, nothing.
    ack = await late.call("watch", {"tasks": {task_id: 1}})
    assert ack == {"ok": True, "sent": 1}
    assert await late.call("watch", {"tasks": {task_id: final["seq"]}}) == {"ok": True, "sent": 0}


async def test_heartbeat_event_carries_server_time(settings: object, sockets: Connect) -> None:
    client = await sockets(user())
    await client.wait_for(lambda: bool(client.heartbeats), timeout=25)
    assert isinstance(client.heartbeats[0]["ts"], float)


async def test_http_errors_are_json(http: TestClient) -> None:
    alice = user()
    resp = await http.get("/api/tasks")
    assert resp.status == 401 and (await resp.json())["error"]["code"] == "unauthorized"
    resp = await http.post(
        "/api/tasks", json={"task": "os.system", "input": {}}, headers=auth(alice)
    )
    assert resp.status == 422 and (await resp.json())["error"]["code"] == "unknown_task"
    resp = await http.post(
        "/api/tasks", json={"task": "demo.count", "input": {"steps": "x"}}, headers=auth(alice)
    )
    body = await resp.json()
    assert resp.status == 422 and body["error"]["details"]["field"] == "input.steps"
    resp = await http.post(
        "/api/tasks", data=b"{not json", headers={**auth(alice), "Content-Type": "application/json"}
    )
    assert resp.status == 400
    listed = await (await http.get("/api/tasks", headers=auth(alice))).json()
    assert listed == {"tasks": []}


async def test_websocket_frames_are_not_compressed(http: TestClient) -> None:
    """permessage-deflate is declined (see docs/PERFORMANCE.md): a client offering it gets plain
    frames, and the Engine.IO handshake still works."""
    ws = await http.session.ws_connect(
        http.make_url("/socket.io/?EIO=4&transport=websocket"), compress=15
    )
    try:
        assert ws.compress == 0
        opened = await ws.receive_str(timeout=5)
        assert opened.startswith("0{")  # Engine.IO OPEN
    finally:
        await ws.close()
