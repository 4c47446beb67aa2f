"""Updates written straight to idle sockets, and through python-engineio's queue whenever a
packet waits there or the send buffer is full; order holds either way. Real gateway, real
Socket.IO clients."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer
from engineio import packet as eio_packet

from gateway.appkeys import FANOUT, SIO
from gateway.live import fanout as fanout_module
from gateway.live.fanout import Fanout
from tests.support import SocketClient, auth, fresh, make_token, serve_gateway

BODY = {"task": "demo.count", "input": {"steps": 2}}


async def test_updates_are_written_straight_to_idle_sockets(
    gateway: TestServer, http: Any, sockets: Callable[[str], Awaitable[SocketClient]]
) -> None:
    who = f"direct-{uuid.uuid4().hex[:6]}"
    client = await sockets(who)
    fan: Fanout = gateway.app[FANOUT]
    before = fan.direct
    resp = await http.post("/api/tasks", json=BODY, headers=auth(who))
    task_id = (await resp.json())["task_id"]
    final = await client.wait_terminal(task_id)
    assert final["status"] == "COMPLETED"
    assert fan.direct > before
    seqs = [e["seq"] for e in client.events[task_id]]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    text = await (await http.get("/metrics")).text()
    assert 'taskgate_socketio_frames_total{path="direct"}' in text
    assert "taskgate_submit_grouped_total" in text


async def test_a_batch_announces_each_task_once_in_order(
    env: dict[str, str],
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    aiohttp_client: Callable[..., Awaitable[Any]],
) -> None:
    """A batch's PENDING updates go out as one message per accept run (two runs here); the
    relay hands each task's to the user's sockets, once, in the batch's order. (No worker
    consumes this gateway's prefix: the tasks stay PENDING.)"""
    settings = fresh(env, TASKGATE_SUBMIT_RATE="0", TASKGATE_MAX_ACTIVE="0")
    server = await serve_gateway(aiohttp_server, settings)
    http = await aiohttp_client(server)
    who = f"announce-{uuid.uuid4().hex[:6]}"
    client = await SocketClient(str(server.make_url("")), make_token(who)).connect()
    try:
        items = [{"task": "demo.count", "input": {"steps": 1}} for _ in range(300)]
        resp = await http.post("/api/tasks/batch", json={"tasks": items}, headers=auth(who))
        assert resp.status == 202
        ids = [t["task_id"] for t in (await resp.json())["tasks"]]
        assert len(set(ids)) == 300
        await client.wait_for(lambda: all(i in client.events for i in ids), 20)
        assert list(client.events) == ids  # first arrivals, in the batch's order
        for task_id in ids:
            assert [(e["status"], e["seq"]) for e in client.events[task_id]] == [("PENDING", 1)]
    finally:
        await client.close()


async def test_a_packet_waiting_in_the_queue_is_never_overtaken(
    gateway: TestServer, sockets: Callable[[str], Awaitable[SocketClient]]
) -> None:
    """If something is waiting in the socket's queue (an ack, a ping), the next update takes
    the queue too: sent straight, it would reach the client first."""
    who = f"order-{uuid.uuid4().hex[:6]}"
    client = await sockets(who)
    sio = gateway.app[SIO]
    fan: Fanout = gateway.app[FANOUT]
    (eio_sid,) = [eio for _, eio in sio.manager.get_participants("/", f"user:{who}")]
    socket = sio.eio.sockets[eio_sid]
    tid = str(uuid.uuid4())

    def snap(seq: int) -> dict[str, Any]:
        return {"task_id": tid, "seq": seq, "status": "RUNNING", "progress": {"percent": seq}}

    queued_before = fan.queued
    # Queued by hand, as python-engineio queues an ack; the writer has not run yet.
    socket.queue.put_nowait(
        eio_packet.Packet(eio_packet.MESSAGE, data=f'2["task",{orjson.dumps(snap(1)).decode()}]')
    )
    await fan.to_room(f"user:{who}", "task", snap(2))
    assert fan.queued == queued_before + 1
    await client.wait_for(lambda: len(client.events[tid]) == 2, timeout=5)
    assert [e["seq"] for e in client.events[tid]] == [1, 2]
    # Once the queue is drained, updates go straight again.
    direct_before = fan.direct
    # The writer takes both packets, then parks in get() again (python-engineio's state: no
    # event to wait on, so it is polled, bounded).
    async with asyncio.timeout(5):
        while socket.queue.qsize() or not socket.queue._getters:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    await fan.to_room(f"user:{who}", "task", snap(3))
    assert fan.direct == direct_before + 1
    await client.wait_for(lambda: len(client.events[tid]) == 3, timeout=5)


async def test_a_socket_with_a_full_send_buffer_gets_its_updates_through_the_queue(
    gateway: TestServer,
    sockets: Callable[[str], Awaitable[SocketClient]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    who = f"slow-{uuid.uuid4().hex[:6]}"
    client = await sockets(who)
    fan: Fanout = gateway.app[FANOUT]
    # Every socket counts as a slow reader now.
    monkeypatch.setattr(fanout_module, "DIRECT_BUFFER_LIMIT", -1)
    tid = str(uuid.uuid4())
    direct_before, queued_before = fan.direct, fan.queued
    for seq in range(1, 21):
        await fan.to_room(f"user:{who}", "task", {"task_id": tid, "seq": seq})
    assert fan.direct == direct_before and fan.queued == queued_before + 20
    await client.wait_for(lambda: len(client.events[tid]) == 20, timeout=5)
    assert [e["seq"] for e in client.events[tid]] == list(range(1, 21))


def test_the_private_attributes_of_direct_writes_are_there_in_the_tested_versions() -> None:
    """The startup check (``direct_internals_missing``) passes with the pinned versions; a
    release that moves one of them makes it name it (the next test shows what happens then)."""
    assert fanout_module.direct_internals_missing() == []


async def test_when_aiohttp_changed_shape_every_packet_takes_the_public_path(
    env: dict[str, str],
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(
        fanout_module,
        "direct_internals_missing",
        lambda: ["aiohttp.web.WebSocketResponse()._writer"],
    )
    settings = fresh(env)
    server = await serve_gateway(aiohttp_server, settings)
    fan: Fanout = server.app[FANOUT]
    assert fan.direct_enabled is False
    assert "direct socket writes disabled" in caplog.text and "_writer" in caplog.text
    who = f"fallback-{uuid.uuid4().hex[:6]}"
    client = await SocketClient(str(server.make_url("")), make_token(who)).connect()
    try:
        http_url = str(server.make_url("/api/tasks"))
        async with (
            aiohttp.ClientSession() as session,
            session.post(http_url, json=BODY, headers=auth(who)) as resp,
        ):
            assert resp.status == 202
            task_id = (await resp.json())["task_id"]
        # No worker consumes this prefix's queues: the PENDING update is what arrives.
        await client.wait_for(lambda: bool(client.events[task_id]), 10)
        assert [e["seq"] for e in client.events[task_id]] == [1]
        assert fan.direct == 0 and fan.queued >= 1
    finally:
        await client.close()
