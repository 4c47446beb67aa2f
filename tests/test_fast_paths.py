"""The fast paths of issue 6 keep their promises: grouped submits, the one-script accept, and
frames written straight to sockets. Real redis-server, real gateway, real Socket.IO clients.

No worker consumes the prefixes used here (but in the gateway tests), so accepted tasks stay
queued and can be counted.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import itertools
import os
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from aiohttp.test_utils import TestServer
from engineio import packet as eio_packet
from redis.asyncio.connection import Connection
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeout

from gateway.live import fanout as fanout_module
from gateway.process import gctune
from gateway.tasks import service as manager_module
from gateway.appkeys import FANOUT, MANAGER, RECORDS, RELAY, SIO
from gateway.broker.redis_broker import RedisBroker, redis_priority
from gateway.tasks.coalesce import pieces
from gateway.live.fanout import Fanout
from gateway.tasks.service import TaskManager
from gateway.broker.outbox import OutboxBroker, outbox_key
from gateway.live.subscriber import Subscriber
from shared.errors import BrokerUnavailable, RateLimited, TaskgateError
from shared.records import AsyncRecords, update_bytes, updates_head
from shared.records_batch import ScriptRuns
from shared.redis_client import async_client
from shared.resp import Pipeline, command, pack_args
from shared.schema import decode_updates, owner_of
from shared.settings import Settings
from shared.status import TaskStatus
from tests.conftest import auth, make_token
from tests.support import RedisServer, SocketClient, serve_gateway

BODY = {"task": "demo.count", "input": {"steps": 2}}


def fresh(env: dict[str, str], **extra: str) -> Settings:
    return Settings.from_env(
        {**env, "TASKGATE_KEY_PREFIX": f"fast-{uuid.uuid4().hex[:8]}:", **extra}
    )


@pytest.fixture(params=["outbox", "plain"])
async def make_manager(
    request: pytest.FixtureRequest, env: dict[str, str]
) -> AsyncIterator[Callable[..., Awaitable[TaskManager]]]:
    """Managers as the gateway builds them (``outbox``: the records' Redis is the broker, one
    script accepts) and as with a broker elsewhere (``plain``: records, push, publish)."""
    made: list[tuple[TaskManager, Any]] = []

    async def make(**extra: str) -> TaskManager:
        settings = fresh(env, **extra)
        client = async_client(settings.require_redis())
        broker: Any = RedisBroker(settings.require_redis(), settings.keys.broker_prefix)
        if request.param == "outbox":
            broker = OutboxBroker(broker, settings.keys)
        manager = TaskManager(
            settings, AsyncRecords(client, settings.keys, settings.retention_s), broker
        )
        made.append((manager, client))
        return manager

    yield make
    for manager, client in made:
        await manager.close()
        await manager.broker.close()
        await client.aclose()


async def submit_all(
    manager: TaskManager, user: str, n: int
) -> list[dict[str, Any] | TaskgateError]:
    async def one() -> dict[str, Any] | TaskgateError:
        try:
            return dict(await manager.submit(user, BODY))
        except TaskgateError as exc:
            return exc

    return await asyncio.gather(*(one() for _ in range(n)))


async def queued(manager: TaskManager) -> int:
    depths = await manager.broker.queue_depths(["fast"])
    return depths["fast"]


async def test_submits_in_flight_are_grouped_and_each_answered(
    make_manager: Callable[..., Awaitable[TaskManager]],
) -> None:
    manager = await make_manager(TASKGATE_SUBMIT_RATE="0", TASKGATE_MAX_ACTIVE="0")
    pubsub = manager.records.client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(manager.settings.keys.progress_channel)
    try:
        answers = await submit_all(manager, "grouped", 60)
        assert all(isinstance(a, dict) for a in answers), answers
        snaps = [a for a in answers if isinstance(a, dict)]
        ids = [s["task_id"] for s in snaps]
        assert len(set(ids)) == 60
        # Written together, not one by one: a few pieces (gateway.tasks.coalesce.pieces).
        assert manager.submit_groups.items == 60 and manager.submit_groups.groups <= 12
        for snap in snaps[:5]:
            assert snap["status"] == "PENDING" and snap["seq"] == 1
            assert await manager.get("grouped", snap["task_id"]) == snap
        assert await queued(manager) == 60
        # Each task's PENDING update went out once, as the answer says.
        seen: dict[str, dict[str, Any]] = {}
        async with asyncio.timeout(10):
            while len(seen) < 60:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None:
                    for update in decode_updates(message["data"]):
                        assert update["owner"] == "grouped"
                        assert update["snapshot"]["task_id"] not in seen
                        seen[update["snapshot"]["task_id"]] = update["snapshot"]
        assert sorted(seen) == sorted(ids)
        assert all(seen[s["task_id"]] == s for s in snaps)
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]


def test_submits_collected_at_once_are_written_in_a_few_even_pieces() -> None:
    assert pieces(27, 8, 4, 1000) == [(0, 8), (8, 16), (16, 24), (24, 27)]
    assert pieces(5, 8, 4, 1000) == [(0, 5)]
    assert pieces(1000, 8, 4, 1000) == [(0, 250), (250, 500), (500, 750), (750, 1000)]
    assert pieces(4500, 8, 4, 1000) == [(i, min(4500, i + 1000)) for i in range(0, 4500, 1000)]
    assert pieces(0, 8, 4, 1000) == []
    for n in range(1, 300):
        got = pieces(n, 8, 4, 64)
        assert got[0][0] == 0 and got[-1][1] == n
        assert all(a[1] == b[0] for a, b in itertools.pairwise(got))
        assert all(0 < end - start <= 64 for start, end in got)
        assert len(got) <= max(4, -(-n // 64))


async def test_group_beyond_the_bucket_gets_429_for_the_rest_only(
    make_manager: Callable[..., Awaitable[TaskManager]],
) -> None:
    manager = await make_manager(TASKGATE_SUBMIT_RATE="10", TASKGATE_MAX_ACTIVE="0")
    answers = await submit_all(manager, "bucket", 25)
    accepted = [a for a in answers if isinstance(a, dict)]
    limited = [a for a in answers if isinstance(a, RateLimited)]
    # The bucket holds 10; a few milliseconds may refill a fraction of one more.
    assert 10 <= len(accepted) <= 11
    assert len(accepted) + len(limited) == 25
    assert all(e.retry_after is not None and e.retry_after >= 1 for e in limited)
    assert await queued(manager) == len(accepted)


async def test_group_beyond_max_active_pushes_nothing_for_the_refused(
    make_manager: Callable[..., Awaitable[TaskManager]],
) -> None:
    manager = await make_manager(TASKGATE_SUBMIT_RATE="0", TASKGATE_MAX_ACTIVE="5")
    answers = await submit_all(manager, "quota", 8)
    accepted = [a for a in answers if isinstance(a, dict)]
    refused = [a for a in answers if isinstance(a, RateLimited)]
    assert len(accepted) == 5 and len(refused) == 3
    assert "too many active tasks" in refused[0].message
    assert await queued(manager) == 5
    if isinstance(manager.broker, OutboxBroker):
        copies = await manager.records.client.hkeys(outbox_key(manager.settings.keys))
        assert sorted(c.decode() for c in copies) == sorted(a["task_id"] for a in accepted)


async def test_batch_of_several_chunks_is_accepted_in_order(
    make_manager: Callable[..., Awaitable[TaskManager]],
) -> None:
    manager = await make_manager(TASKGATE_SUBMIT_RATE="0", TASKGATE_MAX_ACTIVE="0")
    bodies = [{"task": "demo.count", "input": {"steps": 1 + i % 50}} for i in range(2500)]
    bodies[1700] = {"task": "demo.count", "input": {"steps": -1}}
    answers = await manager.submit_many("chunks", bodies)
    assert isinstance(answers[1700], TaskgateError)
    ok = [a for i, a in enumerate(answers) if i != 1700]
    assert all(isinstance(a, dict) for a in ok)
    assert await queued(manager) == 2499
    # The first message in is the first one out (kombu pops the list's tail).
    broker: Any = manager.broker
    inner = broker.inner if isinstance(broker, OutboxBroker) else broker
    tail = await manager.records.client.lindex(inner.queue_key("fast", redis_priority(0)), -1)
    first = ok[0]
    assert isinstance(first, dict)
    assert first["task_id"].encode() in tail


def test_pack_args_is_what_redis_py_sends() -> None:
    args: list[Any] = ["EVAL", "return 1", 0, "é\u20ac", b"a\r\nb", b"", -12, 10**18, "x" * 70_000]
    reference = b"".join(Connection().pack_command(*args))
    assert b"*%d\r\n" % len(args) + pack_args(args) == reference
    assert pack_args([]) == b""
    for bad in (1.5, True, None, ["x"]):
        with pytest.raises(TypeError):
            pack_args(["ok", bad])


async def test_script_runs_run_in_order_and_replies_stay_in_step(env: dict[str, str]) -> None:
    settings = fresh(env)
    client = async_client(settings.require_redis())
    pipe = Pipeline(settings.require_redis())
    key = settings.keys.prefix + "runs"
    source = (
        "local n = redis.call('RPUSH', ARGV[1], ARGV[2]) "
        "if ARGV[2] == 'boom' then return redis.error_reply('boom') end return n"
    )
    sha = hashlib.sha1(source.encode()).hexdigest()
    try:
        async with ScriptRuns(pipe, source, sha, single=False) as runs:
            for i in range(50):
                await runs.send([key, f"v{i}"])
            # Each run saw every one before it: the list grew by one per run, in order.
            assert await runs.replies() == list(range(1, 51))
        await client.delete(key)
        with pytest.raises(ResponseError, match="boom"):
            async with ScriptRuns(pipe, source, sha, single=False) as runs:
                for value in ("a", "boom", "c"):
                    await runs.send([key, value])
                await runs.replies()
        # Redis ran all three. The reply left unread is dropped when it arrives: every later
        # command on the shared connection still gets its own reply.
        assert await client.lrange(key, 0, -1) == [b"a", b"boom", b"c"]
        answers = await asyncio.gather(*(pipe.execute("ECHO", f"e{i}") for i in range(20)))
        assert answers == [f"e{i}".encode() for i in range(20)]
        # A lone run goes as EVALSHA; with the script gone from Redis it is sent again whole.
        await client.script_flush()
        async with ScriptRuns(pipe, source, sha, single=True) as runs:
            await runs.send([key, "d"])
            assert await runs.replies() == [4]
        assert await client.script_exists(sha) == [True]
    finally:
        pipe.close()
        await client.aclose()


async def test_pipeline_authenticates_selects_and_fails_cleanly(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", appendonly=False).start()
    try:
        admin = async_client(server.url)
        await admin.config_set("requirepass", "s3cret")
        await admin.aclose()
        wrong = Pipeline(f"redis://:nope@127.0.0.1:{server.port}/0")
        with pytest.raises(AuthenticationError):
            await wrong.execute("PING")
        wrong.close()
        url = f"redis://:s3cret@127.0.0.1:{server.port}/3"
        pipe = Pipeline(url, timeout=1.0)
        await pipe.execute("SET", "k", b"in-db-3")
        db3 = async_client(url)
        assert await db3.get("k") == b"in-db-3"  # SELECT 3 was sent
        await db3.aclose()
        with pytest.raises(ResponseError, match="wrong number of arguments"):
            await pipe.execute("GET")
        assert await pipe.execute("GET", "k") == b"in-db-3"
        # Redis frozen: a reply not in time is a TimeoutError, and everyone waiting behind it
        # fails too (the connection is aborted); once Redis is back, the next command
        # connects again.
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            waiting = [await pipe.send([command("GET", "k")]) for _ in range(3)]
            with pytest.raises(RedisTimeout):
                await pipe.reply(waiting[0])
            for fut in waiting[1:]:
                with pytest.raises((RedisTimeout, RedisConnectionError)):
                    await pipe.reply(fut)
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        assert await pipe.execute("GET", "k") == b"in-db-3"
        # Redis gone: a connection error, not a hang.
        server.stop()
        with pytest.raises((RedisConnectionError, RedisTimeout)):
            await pipe.execute("GET", "k")
        pipe.close()
    finally:
        server.stop()


async def test_batch_failing_after_a_chunk_ran_leaves_nothing_accepted(tmp_path: Path) -> None:
    """Redis runs out of memory part way through a 3,000-task batch: the batch is refused (503)
    and the records of the chunk that did run are taken back, although Redis refuses commands
    queued in MULTI at that moment."""
    server = RedisServer(tmp_path / "redis", appendonly=False).start()
    client = async_client(server.url)
    settings = Settings(redis_url=server.url, key_prefix="oom:", max_active=0, submit_rate=0)
    broker = OutboxBroker(RedisBroker(server.url, settings.keys.broker_prefix), settings.keys)
    manager = TaskManager(
        settings, AsyncRecords(client, settings.keys, settings.retention_s), broker
    )
    bodies = [BODY] * 3000
    try:
        assert len(await manager.submit_many("mem", bodies[:10])) == 10
        used = int((await client.info("memory"))["used_memory"])
        await client.config_set("maxmemory", used + 2 * 2**20)
        with pytest.raises(BrokerUnavailable):
            await manager.submit_many("mem", bodies)
        await client.config_set("maxmemory", 0)
        # The first chunk ran (its outbox copies are there), yet none of its tasks is accepted.
        assert await client.hlen(outbox_key(settings.keys)) >= 1000 + 10
        assert await client.zcard(settings.keys.user_tasks("mem")) == 10
        assert await client.zcard(settings.keys.user_active("mem")) == 10
        listed = await manager.list_tasks("mem", limit=100)
        assert len(listed) == 10
        # With memory back, the same batch goes through whole.
        answers = await manager.submit_many("mem", bodies)
        assert all(isinstance(a, dict) for a in answers)
        assert await client.zcard(settings.keys.user_tasks("mem")) == 3010
    finally:
        await manager.close()
        await broker.close()
        await client.aclose()
        server.stop()


# -- frames written straight to the socket ---------------------------------------------------


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


def test_update_messages_of_one_or_many_snapshots() -> None:
    snap = {"task_id": "t1", "seq": 1, "status": "PENDING"}
    one = orjson.dumps({"v": 1, "owner": "u", "snapshot": snap})
    assert decode_updates(one) == [{"v": 1, "owner": "u", "snapshot": snap}]
    two = updates_head("u") + orjson.dumps(snap) + b"," + orjson.dumps({**snap, "task_id": "t2"})
    decoded = decode_updates(two + b"]}")
    assert [u["snapshot"]["task_id"] for u in decoded] == ["t1", "t2"]
    assert all(u["owner"] == "u" for u in decoded)
    for bad in (
        {"v": 1, "owner": "u", "snapshots": []},
        {"v": 1, "owner": "u", "snapshots": {"task_id": "t1"}},
        {"v": 1, "owner": "u", "snapshots": [snap, {"seq": 2}]},
        {"v": 1, "owner": "u", "snapshots": [snap, "x"]},
        {"v": 1, "snapshots": [snap]},
        {"v": 1, "owner": "u"},
    ):
        with pytest.raises(ValueError):
            decode_updates(orjson.dumps(bad))


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

        monkeypatch.setattr(manager_module, "RESULT_POLL_S", 60.0)
        manager = server.app[MANAGER]
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
        await client.wait_for(lambda: len(client.events[ids[here]]) == 1, 10)
        # A change nobody published, as if its update was lost while the relay was away.
        for task_id in ids.values():
            await asyncio.to_thread(sync.hset, settings.keys.task(task_id), "seq", 2)
        await server.app[RELAY].resync()
        await client.wait_for(lambda: len(client.events[ids[here]]) == 2, 10)
        again = client.events[ids[here]][1]
        assert again["seq"] == 2 and again["status"] == "PENDING"
        assert ids[away] not in client.events
    finally:
        sync.close()
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


def test_gc_tuning_freezes_startup_and_measures_pauses() -> None:
    before = gc.get_threshold()
    try:
        gctune.tune()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[2] == gctune.FULL_EVERY
        counted = sum(gctune.PAUSES.count)
        for _ in range(50_000):
            cycle: list[Any] = []
            cycle.append(cycle)
        assert sum(gctune.PAUSES.count) > counted
        assert max(gctune.PAUSES.take_max_ms()) > 0
        with gctune.paused():
            assert not gc.isenabled()
        assert gc.isenabled()
    finally:
        gc.callbacks.remove(gctune.PAUSES)
        gc.unfreeze()
        gc.set_threshold(*before)
