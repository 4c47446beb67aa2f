"""The relay: owners read from a message's head, updates nobody here listens to left unparsed,
resync after a reconnect, and its pub/sub subscriber. Real redis-server and gateway."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from aiohttp.test_utils import TestServer
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.appkeys import RECORDS, RELAY, SERVICE
from gateway.live.subscriber import Subscriber
from gateway.tasks import waiters as waiters_module
from shared.records import update_bytes, updates_head
from shared.redis_client import async_client
from shared.schema import decode_updates, owner_of
from shared.status import TaskStatus
from tests.support import RedisServer, SocketClient, auth, fresh, make_token, serve_gateway

BODY = {"task": "demo.count", "input": {"steps": 2}}

OWNERS = ["u", "a/b", 'q"uote', "back\\slash", ',"snapshot":[', "ünï 中", "\u2028", "😀", ""]


def test_owner_is_read_from_the_head_as_a_full_decode_reads_it(env: dict[str, str]) -> None:
    """``owner_of`` reads what ``decode_updates`` would, for heads as Python writes them and as
    the scripts write them (Lua's cjson escapes ``/``); anything else is None (decode it all)."""
    snap = orjson.dumps({"task_id": "t1", "seq": 1, "status": "PENDING"})
    sync = redis.Redis.from_url(env["TASKGATE_REDIS_URL"])
    try:
        for owner in OWNERS:
            lua_owner = sync.eval("return cjson.encode(ARGV[1])", 0, owner)
            for message in (
                update_bytes(owner, snap),
                updates_head(owner) + snap + b"]}",
                b'{"v":1,"owner":' + lua_owner + b',"snapshot":' + snap + b"}",
            ):
                assert owner_of(message) == owner, message
                assert decode_updates(message)[0]["owner"] == owner
    finally:
        sync.close()
    for bad in (
        b"not json",
        b'{"v":2,"owner":"u","snapshot":{}}',
        b'{"v":1,"owner":5,"snapshot":{}}',
        b'{"v": 1, "owner": "u", "snapshot": {}}',
        b'{"v":1,"owner":"u"}',
        b'{"v":1,"owner":"u"x","snapshot":{}}',
        b'{"v":1,"owner":",snapshot":{}}',
        b'{"v":1,"owner":"\xff","snapshot":{}}',
        b'{"v":1,"owner":"a\\","snapshot":{}}',
    ):
        assert owner_of(bad) is None, bad


async def test_relay_leaves_unparsed_the_updates_nobody_here_listens_to(
    env: dict[str, str],
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    aiohttp_client: Callable[..., Awaitable[Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Updates of a user with no socket on this gateway are dropped unparsed; a connected user
    still gets theirs, and a ``wait_result`` makes the relay read them all again (the end
    wakes it, well before the poll would)."""
    settings = fresh(env, TASKGATE_SUBMIT_RATE="0")
    server = await serve_gateway(aiohttp_server, settings)
    http = await aiohttp_client(server)
    relay = server.app[RELAY]
    here, away = f"here-{uuid.uuid4().hex[:6]}", f"away-{uuid.uuid4().hex[:6]}"
    client = await SocketClient(str(server.make_url("")), make_token(here)).connect()
    waiter: asyncio.Task[Any] | None = None
    try:
        resp = await http.post("/api/tasks", json=BODY, headers=auth(away))
        assert resp.status == 202
        away_task = (await resp.json())["task_id"]
        delivered = relay.delivered
        resp = await http.post("/api/tasks", json=BODY, headers=auth(here))
        here_task = (await resp.json())["task_id"]
        await client.wait_for(lambda: here_task in client.events, 10)
        # The relay reads the channel in order: away's PENDING came before here's.
        assert relay.unheard == 1 and relay.delivered == delivered + 1
        assert away_task not in client.events

        monkeypatch.setattr(waiters_module, "RESULT_POLL_S", 60.0)
        manager = server.app[SERVICE]
        waiter = asyncio.create_task(manager.wait_result(away, away_task, 60))
        async with asyncio.timeout(10):
            while not manager.waiting:  # noqa: ASYNC110 (state of another task)
                await asyncio.sleep(0.01)
        unheard = relay.unheard
        done = await server.app[RECORDS].transition(
            away_task, "status", status=TaskStatus.COMPLETED
        )
        assert done.applied
        async with asyncio.timeout(10):
            final = await waiter
        assert final["status"] == "COMPLETED" and final["seq"] == done.seq
        assert relay.unheard == unheard
        assert not manager.waiting
    finally:
        if waiter is not None:
            waiter.cancel()
        await client.close()


async def test_resync_sends_each_connected_user_their_live_tasks(
    env: dict[str, str],
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    aiohttp_client: Callable[..., Awaitable[Any]],
) -> None:
    """What the relay calls after a reconnect: the live tasks of every user with a socket here
    go out again, as the records have them (an update pub/sub carried while the relay was away
    is lost), each to its own user's room only."""
    settings = fresh(env, TASKGATE_SUBMIT_RATE="0")
    server = await serve_gateway(aiohttp_server, settings)
    http = await aiohttp_client(server)
    here, away = f"here-{uuid.uuid4().hex[:6]}", f"away-{uuid.uuid4().hex[:6]}"
    client = await SocketClient(str(server.make_url("")), make_token(here)).connect()
    sync = redis.Redis.from_url(env["TASKGATE_REDIS_URL"])
    try:
        ids = {}
        for who in (here, away):
            resp = await http.post("/api/tasks", json=BODY, headers=auth(who))
            assert resp.status == 202
            ids[who] = (await resp.json())["task_id"]
        # The PENDING update, once (the connect-time snapshot does not repeat it).
        await client.wait_for(lambda: len(client.events[ids[here]]) >= 1, 10)
        await asyncio.sleep(0.2)
        seen = len(client.events[ids[here]])
        assert [e["seq"] for e in client.events[ids[here]]] == [1]
        # A change nobody published, as if its update was lost while the relay was away.
        for task_id in ids.values():
            await asyncio.to_thread(sync.hset, settings.keys.task(task_id), "seq", 2)
        await server.app[RELAY].resync()
        await client.wait_for(lambda: len(client.events[ids[here]]) == seen + 1, 10)
        again = client.events[ids[here]][seen]
        assert again["seq"] == 2 and again["status"] == "PENDING"
        assert ids[away] not in client.events
    finally:
        sync.close()
        await client.close()


# -- the relay's subscriber --------------------------------------------------------------------


async def test_subscriber_authenticates_and_receives_every_message(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", appendonly=False).start()
    try:
        admin = async_client(server.url)
        await admin.config_set("requirepass", "s3cret")
        await admin.aclose()
        url = f"redis://:s3cret@127.0.0.1:{server.port}/0"
        wrong = Subscriber(f"redis://:nope@127.0.0.1:{server.port}/0")
        with pytest.raises(AuthenticationError):
            await wrong.connect(3.0)
        wrong.close()
        sub = Subscriber(url)
        await sub.connect(3.0)
        await sub.subscribe("chan")
        publisher = async_client(url)
        await publisher.publish("chan", b"first")
        async with publisher.pipeline(transaction=False) as pipe:
            for i in range(500):
                pipe.publish("chan", b"m%d" % i)
            await pipe.execute()
        got: list[bytes] = []
        async with asyncio.timeout(5):
            while len(got) < 501:
                got.extend(r[2] for r in await sub.replies() if r[0] == b"message")
        assert got == [b"first", *(b"m%d" % i for i in range(500))]
        # A message far larger than one read arrives whole (its parts do not wake the reader).
        big = bytes(range(256)) * 8192
        await publisher.publish("chan", big)
        async with asyncio.timeout(5):
            whole = [r[2] for r in await sub.replies() if r[0] == b"message"]
        assert whole == [big]
        sub.ping()
        async with asyncio.timeout(5):
            assert [b"pong", b""] in await sub.replies()
        await publisher.aclose()
        server.stop()
        # A server gone is an error from replies(), not a hang.
        async with asyncio.timeout(5):
            with pytest.raises(RedisConnectionError):
                while True:
                    await sub.replies()
        sub.close()
    finally:
        server.stop()
