"""Isolation between users (issue 4): nobody sees, reads or touches another user's tasks."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

from aiohttp.test_utils import TestClient

from tests.support import (
    SocketClient,
    auth,
)

Connect = Callable[[str], Awaitable[SocketClient]]

COUNT = {"task": "demo.count", "input": {"steps": 1, "delay": 0}}


def user() -> str:
    return f"s-{uuid.uuid4().hex[:8]}"


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
