"""Each socket gets a task's snapshots once and in order, wherever they come from: the relay,
the connect-time catch-up, ``watch``, a resync or a stray copy on pub/sub (gateway.live.ledger).
Real redis-server, worker, gateway and Socket.IO clients."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp.test_utils import TestClient, TestServer

from gateway.appkeys import RECORDS, RELAY, SETTINGS, TASK_EVENTS
from shared.records import update_bytes
from tests.support import CatchUps, SocketClient, auth

Connect = Callable[[str], Awaitable[SocketClient]]
BODY = {"task": "demo.count", "input": {"steps": 2, "delay": 0}}


def who() -> str:
    return f"ev-{uuid.uuid4().hex[:8]}"


def seqs(client: SocketClient, task_id: str) -> list[int]:
    return [e["seq"] for e in client.events[task_id]]


def rising(values: list[int]) -> bool:
    return all(a < b for a, b in itertools.pairwise(values))


async def run_one(http: TestClient, client: SocketClient, user: str) -> dict[str, Any]:
    resp = await http.post("/api/tasks", json=BODY, headers=auth(user))
    assert resp.status == 202
    return await client.wait_terminal((await resp.json())["task_id"])


async def publish(gateway: TestServer, owner: str, snap: dict[str, Any]) -> None:
    client = gateway.app[RECORDS].client
    channel = gateway.app[SETTINGS].keys.progress_channel
    await client.publish(channel, update_bytes(owner, orjson.dumps(snap)))


async def test_a_repeated_or_older_update_on_pub_sub_is_not_sent_again(
    gateway: TestServer, http: TestClient, sockets: Connect
) -> None:
    user = who()
    events = gateway.app[TASK_EVENTS]
    catch_ups = CatchUps(events)
    client = await sockets(user)
    # Its connect-time catch-up done before the task exists: else its read may end after the
    # task did, and the ledger drop the final snapshot it returns (a third drop, CI saw it).
    await catch_ups.wait(client)
    final = await run_one(http, client, user)
    task_id = final["task_id"]
    got = seqs(client, task_id)
    assert got == list(range(1, final["seq"] + 1))
    dropped = events.dropped
    relayed = gateway.app[RELAY].delivered
    first = client.events[task_id][0]
    # The terminal update again (as a resync or a second publisher would send it), then the
    # PENDING one after it (as RabbitMQ's late announce would), then a genuinely newer one.
    await publish(gateway, user, final)
    await publish(gateway, user, first)
    newer = {**final, "seq": final["seq"] + 1}
    await publish(gateway, user, newer)
    await client.wait_for(lambda: len(client.events[task_id]) > len(got), 10)
    await asyncio.sleep(0.2)
    assert seqs(client, task_id) == [*got, final["seq"] + 1]
    assert gateway.app[RELAY].delivered >= relayed + 3  # the relay did handle all three
    assert events.dropped == dropped + 2
    metrics = await (await http.get("/metrics")).text()
    assert "taskgate_task_events_dropped_total" in metrics


async def test_a_second_socket_catches_up_alone_and_the_first_gets_nothing_twice(
    http: TestClient, sockets: Connect
) -> None:
    user = who()
    first = await sockets(user)
    final = await run_one(http, first, user)
    task_id = final["task_id"]
    before = seqs(first, task_id)
    second = await sockets(user)
    # The connect-time catch-up: the task as it is now, to the new socket only.
    await second.wait_for(lambda: bool(second.events[task_id]), 10)
    assert seqs(second, task_id) == [final["seq"]]
    assert second.events[task_id][0] == final
    await asyncio.sleep(0.3)
    assert seqs(first, task_id) == before
    assert seqs(second, task_id) == [final["seq"]]


async def test_watch_sends_what_the_client_asks_for_and_the_catch_up_only_what_it_lacks(
    http: TestClient, sockets: Connect
) -> None:
    user = who()
    client = await sockets(user)
    final = await run_one(http, client, user)
    task_id = final["task_id"]
    had = seqs(client, task_id)
    # A new socket (a reconnect) gets the newest once at connect; the first socket nothing.
    other = await sockets(user)
    await other.wait_for(lambda: bool(other.events[task_id]), 10)
    await asyncio.sleep(0.2)
    assert seqs(other, task_id) == [final["seq"]]
    # watch is the client saying what it has: asked with an old seq, it is sent the newest
    # again (the contract's rule), to itself only.
    ack = await other.call("watch", {"tasks": {task_id: 0}})
    assert ack == {"ok": True, "sent": 1}
    await other.wait_for(lambda: len(other.events[task_id]) == 2, 10)
    assert other.events[task_id][1] == final
    assert await other.call("watch", {"tasks": {task_id: final["seq"]}}) == {"ok": True, "sent": 0}
    await asyncio.sleep(0.2)
    assert seqs(client, task_id) == had


async def test_sockets_connecting_while_tasks_start_see_each_seq_once_in_order(
    gateway: TestServer, http: TestClient, sockets: Connect
) -> None:
    """The race the ledger is for: a socket's connect-time read of the records runs while the
    relay delivers updates of the same tasks (a PENDING read from the record and the same
    PENDING from pub/sub used to reach the socket twice)."""
    user = who()
    ids: list[str] = []

    async def submit() -> None:
        for _ in range(4):
            resp = await http.post("/api/tasks", json=BODY, headers=auth(user))
            assert resp.status == 202
            ids.append((await resp.json())["task_id"])
            await asyncio.sleep(0.01)

    for _ in range(3):
        clients = await asyncio.gather(submit(), *(sockets(user) for _ in range(4)))
        for client in clients[1:]:
            assert isinstance(client, SocketClient)
            for task_id in ids:
                final = await client.wait_terminal(task_id)
                got = seqs(client, task_id)
                assert rising(got), (task_id, got)
                # Nothing after the end, and the end is the record's last change.
                assert got[-1] == final["seq"], (task_id, got)
    assert gateway.app[TASK_EVENTS].rooms() >= 1


async def test_a_room_is_forgotten_with_its_last_socket(
    gateway: TestServer, http: TestClient, sockets: Connect
) -> None:
    events = gateway.app[TASK_EVENTS]
    user = who()
    a, b = await sockets(user), await sockets(user)
    await run_one(http, a, user)
    room = f"user:{user}"
    assert room in events._sent
    await a.close()
    await asyncio.sleep(0.2)
    assert room in events._sent  # b is still there
    await b.close()
    for _ in range(50):
        if room not in events._sent:
            break
        await asyncio.sleep(0.05)
    assert room not in events._sent
