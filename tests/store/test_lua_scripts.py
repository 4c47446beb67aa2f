"""Each Lua script of ``shared/lua/`` run alone against the real redis-server, with the KEYS and
ARGV its Python wrapper builds: its return code and the keys it wrote."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from importlib.resources import files
from typing import Any
from uuid import uuid4

import orjson
import pytest
import redis

from gateway.broker.outbox import sweep_call
from gateway.broker.redis_broker import RedisBroker
from gateway.tasks.ratelimit import bucket_call
from shared.keys import Keys
from shared.records import (
    AnnotateCode,
    CreateCode,
    HeartbeatCode,
    StartGuard,
    TransitionCode,
    annotate_call,
    create_call,
    heartbeat_call,
    new_record_fields,
    snapshot_call,
    stall_call,
    transition_call,
    updates_head,
)
from shared.records_batch import (
    BatchRecords,
    InlinePush,
    pending_common,
    pending_snapshot,
    publish_many_call,
)
from shared.redis_client import async_client
from shared.resp import Pipeline
from shared.schema import SCHEMA_VERSION, SNAPSHOT_FIELDS
from shared.scripts import INCLUDE, ScriptCall, source
from shared.status import TERMINAL_NAMES, TaskStatus
from tests.support import RedisServer

RETENTION = 600
OWNER = "ann"


def run(client: redis.Redis, name: str, call: ScriptCall) -> Any:
    return client.register_script(source(name))(keys=call.keys, args=call.args)


def subscribe(client: redis.Redis, channel: str) -> Any:
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel)
    assert pubsub.get_message(timeout=2) is None  # the subscription confirmed
    return pubsub


def raw_messages(pubsub: Any, n: int, timeout: float = 2.0) -> list[bytes]:
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        msg = pubsub.get_message(timeout=0.1)
        if msg is not None:
            out.append(msg["data"])
    assert len(out) == n, out
    return out


def messages(pubsub: Any, n: int) -> list[Any]:
    return [orjson.loads(m) for m in raw_messages(pubsub, n)]


def create(client: redis.Redis, keys: Keys, max_active: int = 0, owner: str = OWNER) -> str:
    task_id = str(uuid4())
    fields = new_record_fields(task_id, "demo.count", "fast", time.time())
    code, _ = run(client, "create.lua", create_call(keys, owner, fields, max_active, RETENTION))
    assert code == CreateCode.CREATED
    return task_id


def transition(client: redis.Redis, keys: Keys, task_id: str, mode: Any, **kw: Any) -> list[Any]:
    reply: list[Any] = run(
        client, "transition.lua", transition_call(keys, task_id, RETENTION, mode, **kw)
    )
    return reply


def field(client: redis.Redis, keys: Keys, task_id: str, name: str) -> Any:
    raw = client.hget(keys.task(task_id), name)
    return None if raw is None else orjson.loads(raw)


# The loader and the fragments.


def test_every_file_has_its_header_and_no_key_built_inside() -> None:
    lua = files("shared") / "lua"
    names = sorted(p.name for p in lua.iterdir() if p.name.endswith(".lua"))
    assert {"transition.lua", "create.lua", "create_batch.lua", "submit_bucket.lua"} <= set(names)
    for name in names:
        text = (lua / name).read_text()
        header = []
        for line in text.splitlines():
            if not line.startswith("--") or line.startswith(INCLUDE):
                break
            header.append(line)
        assert header[0].startswith(f"-- {name}"), name
        head = "\n".join(header)
        assert "KEYS" in head and "ARGV" in head, name
        assert "Returns" in head or "Defines" in head, name
        body = text[len(head) :]
        for literal in ("'task:'", "'user:'", ".. 'progress'", "prefix .. '"):
            assert literal not in body, (name, literal)


def test_includes_are_expanded_once_each() -> None:
    text = source("heartbeat.lua")  # publish.lua (with snapshot_json.lua) and now.lua
    assert INCLUDE not in text
    assert text.count("local function snapshot(") == 1
    assert text.count("local function publish(") == 1
    assert text.count("local function now(") == 1
    assert source("heartbeat.lua") is text  # cached


def test_fragments_agree_with_the_python_side(client: redis.Redis) -> None:
    fields = client.eval(source("snapshot_json.lua") + "return cjson.encode(SNAPSHOT_FIELDS)", 0)
    assert tuple(orjson.loads(fields)) == SNAPSHOT_FIELDS
    terminal = client.eval(
        source("terminal.lua") + "local out = {} for s in pairs(TERMINAL) do "
        "out[#out + 1] = s end table.sort(out) return out",
        0,
    )
    assert [orjson.loads(s) for s in terminal] == sorted(TERMINAL_NAMES)


def test_broker_queues_are_the_lists_the_broker_pushes_to() -> None:
    keys = Keys(prefix="t-lists:")
    broker = RedisBroker("redis://127.0.0.1:1/0", keys.broker_prefix)
    assert keys.broker_queues("fast") == tuple(broker.queue_key("fast", p) for p in range(10))


# transition.lua


def test_transition_applies_publishes_and_refuses_to_leave_a_terminal_status(
    client: redis.Redis, keys: Keys
) -> None:
    task_id = create(client, keys)
    pubsub = subscribe(client, keys.progress_channel)
    try:
        code, seq, cancel, snap = transition(
            client, keys, task_id, "status", status=TaskStatus.RUNNING
        )
        assert (code, seq, cancel) == (TransitionCode.APPLIED, 2, b"0")
        assert orjson.loads(snap)["status"] == "RUNNING"
        client.zadd(keys.running, {task_id: time.time()})
        code, seq, _, snap = transition(
            client, keys, task_id, "status", status=TaskStatus.COMPLETED, fields={"result": 7}
        )
        assert (code, seq) == (TransitionCode.APPLIED, 3)
        (first, second) = messages(pubsub, 2)
    finally:
        pubsub.close()
    assert first["v"] == SCHEMA_VERSION and first["owner"] == OWNER
    assert first["snapshot"]["seq"] == 2 and second["snapshot"]["status"] == "COMPLETED"
    assert second["snapshot"]["result"] == 7
    # It left the active set and the running set, and entered the ended set.
    assert client.zscore(keys.user_active(OWNER), task_id) is None
    assert client.zscore(keys.user_ended(OWNER), task_id) is not None
    assert client.zscore(keys.running, task_id) is None
    assert 0 < client.ttl(keys.task(task_id)) <= RETENTION
    # Terminal: nothing moves it any more.
    code, seq, _ = transition(client, keys, task_id, "status", status=TaskStatus.RUNNING)
    assert (code, seq) == (TransitionCode.ALREADY_TERMINAL, 3)
    assert field(client, keys, task_id, "status") == "COMPLETED"
    assert field(client, keys, task_id, "seq") == 3


def test_transition_skips_stale_progress_flags_cancel_and_checks_the_owner(
    client: redis.Redis, keys: Keys
) -> None:
    task_id = create(client, keys)
    assert transition(client, keys, task_id, "progress", percent=10.0)[0] == TransitionCode.SKIPPED
    transition(client, keys, task_id, "status", status=TaskStatus.RUNNING)
    assert transition(client, keys, task_id, "progress", percent=40.0)[0] == TransitionCode.APPLIED
    code, seq, _ = transition(client, keys, task_id, "progress", percent=30.0)
    assert (code, seq) == (TransitionCode.SKIPPED, 3)
    only = transition(
        client, keys, task_id, "status", status=TaskStatus.FAILED, only_if=[TaskStatus.PENDING]
    )
    assert only[0] == TransitionCode.SKIPPED
    assert transition(client, keys, task_id, "cancel", owner="bob")[0] == TransitionCode.MISSING
    code, seq, cancel = transition(
        client, keys, task_id, "cancel", owner=OWNER, status=TaskStatus.CANCELLED
    )
    # Running: the flag is set, the status stays (the worker stops at its next step).
    assert (code, seq, cancel) == (TransitionCode.CANCEL_FLAGGED, 3, b"1")
    assert field(client, keys, task_id, "status") == "RUNNING"
    assert transition(client, keys, "no-such-task", "status")[0] == TransitionCode.MISSING


def start_run(
    client: redis.Redis, keys: Keys, task_id: str, attempt: int = 1, stale: float = 30.0,
    max_runs: int = 3,
) -> list[Any]:  # fmt: skip
    guard = StartGuard(attempt, stale, max_runs)
    fields = {"attempt": attempt}
    return transition(
        client, keys, task_id, "status", status=TaskStatus.RUNNING, start=guard, fields=fields
    )


def test_a_start_counts_its_run_and_a_second_delivery_finds_it_live(
    client: redis.Redis, keys: Keys
) -> None:
    """Two deliveries of one message start at once: the first counts run 1 and stamps the
    heartbeat; the second is refused LIVE with the heartbeat's age and changes nothing. Once the
    heartbeat is older than the stale limit, a start takes over as run 2."""
    task_id = create(client, keys)
    first = start_run(client, keys, task_id)
    assert first[0] == TransitionCode.APPLIED and first[1] == 2 and first[4] == 1
    assert field(client, keys, task_id, "_attempt") == 1
    assert client.zscore(keys.running, task_id) is not None
    second = start_run(client, keys, task_id)
    assert second[0] == TransitionCode.LIVE and 0 <= float(second[3]) < 5
    assert client.hget(keys.task(task_id), "seq") == b"2"  # nothing moved
    # The other run went silent: its heartbeat is older than the limit.
    client.hset(keys.task(task_id), "_hb", repr(time.time() - 60))
    taken = start_run(client, keys, task_id)
    assert taken[0] == TransitionCode.APPLIED and taken[4] == 2
    assert field(client, keys, task_id, "_attempt") == 2


def test_a_start_refuses_an_attempt_already_retried_and_a_task_that_keeps_killing_its_worker(
    client: redis.Redis, keys: Keys
) -> None:
    task_id = create(client, keys)
    # The record is at attempt 2 (attempt 1 asked for its retry): a late copy of attempt 1
    # does not run.
    client.hset(keys.task(task_id), mapping={"attempt": b"2", "status": b'"RETRYING"'})
    assert start_run(client, keys, task_id, attempt=1)[0] == TransitionCode.RETRIED
    assert field(client, keys, task_id, "status") == "RETRYING"
    # Three runs started and none ended (each killed its process): the fourth is refused with
    # the count, and the record is not touched.
    client.hset(keys.task(task_id), mapping={"_attempt": b"3", "_hb": repr(time.time() - 90)})
    code, _, _, runs = start_run(client, keys, task_id, attempt=2)
    assert (code, float(runs)) == (TransitionCode.WORKER_LOST, 3.0)
    assert field(client, keys, task_id, "_attempt") == 3
    assert start_run(client, keys, task_id, attempt=2, max_runs=4)[0] == TransitionCode.APPLIED


def test_a_completed_end_with_cancel_wins_ends_cancelled_when_a_cancel_was_asked(
    client: redis.Redis, keys: Keys
) -> None:
    """A task cancelled while it ran, that finished before it saw the cancel: its COMPLETED end
    becomes CANCELLED in the same script run, without its result; without a cancel it
    completes."""
    ended: dict[str, str] = {}
    for asked in (True, False):
        task_id = create(client, keys)
        start_run(client, keys, task_id)
        if asked:
            assert transition(client, keys, task_id, "cancel", owner=OWNER)[0] == 3
        code, _, _, snap = transition(
            client, keys, task_id, "status", status=TaskStatus.COMPLETED, percent=100.0,
            cancel_wins=True, fields={"finished_at": 1.5, "result": {"n": 1}},
        )  # fmt: skip
        snapshot = orjson.loads(snap)
        ended[snapshot["status"]] = snapshot["result"]
        assert code == (TransitionCode.CANCELLED_INSTEAD if asked else TransitionCode.APPLIED)
        assert snapshot["finished_at"] == 1.5
        assert client.zscore(keys.user_ended(OWNER), task_id) is not None
        assert client.zscore(keys.running, task_id) is None
    assert ended == {"CANCELLED": None, "COMPLETED": {"n": 1}}


# create.lua


def test_create_refuses_an_existing_id_and_at_quota_with_the_count(
    client: redis.Redis, keys: Keys
) -> None:
    first = create(client, keys, max_active=2)
    # An id whose record expired unfinished does not count.
    client.zadd(keys.user_active(OWNER), {"gone": 1.0})
    second = create(client, keys, max_active=2)
    assert client.zscore(keys.user_active(OWNER), "gone") is None
    fields = new_record_fields(str(uuid4()), "demo.count", "fast", time.time())
    code, count = run(client, "create.lua", create_call(keys, OWNER, fields, 2, RETENTION))
    assert (code, count) == (CreateCode.AT_QUOTA, b"2")
    assert not client.exists(keys.task(fields["task_id"]))
    fields["task_id"] = first
    code, _ = run(client, "create.lua", create_call(keys, OWNER, fields, 0, RETENTION))
    assert code == CreateCode.EXISTS
    assert {m.decode() for m in client.zrange(keys.user_tasks(OWNER), 0, -1)} == {first, second}
    assert field(client, keys, first, "seq") == 1
    assert client.hget(keys.task(first), "_owner") == OWNER.encode()
    assert client.hget(keys.task(first), "_pct") is None


# heartbeat.lua and stall.lua


def test_stall_marks_a_silent_running_task_and_its_heartbeat_clears_it(
    client: redis.Redis, keys: Keys
) -> None:
    task_id = create(client, keys)
    assert run(client, "heartbeat.lua", heartbeat_call(keys, task_id, RETENTION)) == [
        HeartbeatCode.NOT_RUNNING,
        b"0",
    ]
    transition(client, keys, task_id, "status", status=TaskStatus.RUNNING)
    code, _ = run(client, "heartbeat.lua", heartbeat_call(keys, task_id, RETENTION))
    assert code == HeartbeatCode.STAMPED
    assert client.zscore(keys.running, task_id) == pytest.approx(time.time(), abs=5)
    assert float(client.hget(keys.task(task_id), "_hb") or 0) == pytest.approx(time.time(), abs=5)
    # Silent since long ago (and a task that left RUNNING, still in the set).
    client.hdel(keys.task(task_id), "_hb")
    other = create(client, keys)
    client.zadd(keys.running, {task_id: 1.0, other: 1.0})
    assert run(client, "stall.lua", stall_call(keys, 30.0, RETENTION, 100)) == [task_id.encode()]
    assert field(client, keys, task_id, "stalled") is True
    assert field(client, keys, task_id, "seq") == 3
    assert client.zscore(keys.running, other) is None
    assert (client.zscore(keys.running, task_id) or 0) > time.time() + RETENTION - 60
    assert run(client, "stall.lua", stall_call(keys, 30.0, RETENTION, 100)) == []
    code, _ = run(client, "heartbeat.lua", heartbeat_call(keys, task_id, RETENTION))
    assert code == HeartbeatCode.PUBLISHED
    assert field(client, keys, task_id, "stalled") is False
    assert field(client, keys, task_id, "seq") == 4
    missing = run(client, "heartbeat.lua", heartbeat_call(keys, "no-such-task", RETENTION))
    assert missing[0] == HeartbeatCode.MISSING


# snapshot.lua and annotate.lua


def test_snapshot_is_the_owners_only(client: redis.Redis, keys: Keys) -> None:
    task_id = create(client, keys)
    snap = orjson.loads(run(client, "snapshot.lua", snapshot_call(keys, task_id, OWNER)))
    assert list(snap) == list(SNAPSHOT_FIELDS)
    assert snap["task_id"] == task_id and snap["seq"] == 1 and snap["result"] is None
    assert run(client, "snapshot.lua", snapshot_call(keys, task_id, None)) is not None
    assert run(client, "snapshot.lua", snapshot_call(keys, task_id, "bob")) is None
    assert run(client, "snapshot.lua", snapshot_call(keys, "no-such-task", None)) is None


def test_annotate_is_a_compare_and_set(client: redis.Redis, keys: Keys) -> None:
    task_id = create(client, keys)
    first = {"state": "pending", "attempts": 0}
    code, seq, snap = run(
        client, "annotate.lua", annotate_call(keys, task_id, "webhook", first, None)
    )
    assert (code, seq) == (AnnotateCode.APPLIED, 2)
    assert orjson.loads(snap)["webhook"] == first
    stale = orjson.dumps({"state": "other"})
    refused = run(client, "annotate.lua", annotate_call(keys, task_id, "webhook", {}, stale))
    assert refused == [AnnotateCode.CONFLICT, 0, b""]
    current = client.hget(keys.task(task_id), "webhook")
    second = {"state": "delivered", "attempts": 1}
    done = run(client, "annotate.lua", annotate_call(keys, task_id, "webhook", second, current))
    assert done[:2] == [AnnotateCode.APPLIED, 3]
    missing = run(client, "annotate.lua", annotate_call(keys, "no-such-task", "webhook", 1, None))
    assert missing[0] == AnnotateCode.MISSING


# create_batch.lua and publish_many.lua


def _rows(n: int) -> list[dict[str, Any]]:
    return [{"task_id": str(uuid4()), "task": "demo.count", "queue": "fast"} for _ in range(n)]


@pytest.fixture
async def batch(redis_server: RedisServer, keys: Keys) -> AsyncIterator[BatchRecords]:
    """The gateway's batch writer on its own async client and pipelined connection."""
    aclient = async_client(redis_server.url)
    pipe = Pipeline(redis_server.url)
    try:
        yield BatchRecords(aclient, keys, RETENTION, pipe)
    finally:
        pipe.close()
        await aclient.aclose()


async def test_create_batch_counts_the_quota_down_and_refuses_existing_ids(
    batch: BatchRecords, client: redis.Redis, keys: Keys
) -> None:
    now = time.time()
    rows = _rows(3)
    codes = await batch.create(OWNER, pending_common(now), rows, now, 2)
    assert codes == [CreateCode.CREATED, CreateCode.CREATED, CreateCode.AT_QUOTA]
    again = await batch.create(OWNER, pending_common(now), rows[:1], now, 0)
    assert again == [CreateCode.EXISTS]
    assert [client.exists(keys.task(r["task_id"])) for r in rows] == [1, 1, 0]
    assert client.zcard(keys.user_active(OWNER)) == 2
    assert client.zcard(keys.user_tasks(OWNER)) == 2
    snap = orjson.loads(run(client, "snapshot.lua", snapshot_call(keys, rows[0]["task_id"], None)))
    assert snap == pending_snapshot(pending_common(now), rows[0])


async def test_create_batch_with_the_broker_part_pushes_copies_and_announces(
    batch: BatchRecords, client: redis.Redis, keys: Keys
) -> None:
    now = time.time()
    common = pending_common(now)
    rows = _rows(3)
    lists = keys.broker_queues("fast")
    picks = [lists[0], lists[3], lists[0]]
    snaps = [orjson.dumps(pending_snapshot(common, r)) for r in rows]
    entries = [
        (picks[i], b'{"id": "%s"}' % r["task_id"].encode(), keys.outbox_times("fast"), snaps[i])
        for i, r in enumerate(rows)
    ]
    inline = InlinePush(keys.outbox, now, entries)
    call = batch.create_args(OWNER, common, rows, now, 0, inline)
    # Each list and index once in KEYS, after the six fixed ones.
    assert call.keys[6:] == [lists[0], keys.outbox_times("fast"), lists[3]]
    pubsub = subscribe(client, keys.progress_channel)
    try:
        async with batch.runs(1) as runs:
            await runs.send(call)
            assert await runs.replies() == [[1, 1, 1]]
        (message,) = raw_messages(pubsub, 1)
    finally:
        pubsub.close()
    assert message == updates_head(OWNER) + b",".join(snaps) + b"]}"
    # The first in is the first out: kombu pops the tail.
    assert client.lrange(lists[0], 0, -1) == [entries[2][1], entries[0][1]]
    assert client.lrange(lists[3], 0, -1) == [entries[1][1]]
    assert client.hget(keys.outbox, rows[1]["task_id"]) == lists[3].encode() + b"\n" + entries[1][1]
    assert client.zscore(keys.outbox_times("fast"), rows[2]["task_id"]) == pytest.approx(now)


def test_publish_many_publishes_in_order(client: redis.Redis, keys: Keys) -> None:
    pubsub = subscribe(client, keys.progress_channel)
    try:
        reply = run(client, "publish_many.lua", publish_many_call(keys, [b'{"a":1}', b'{"a":2}']))
        assert reply == 2
        assert messages(pubsub, 2) == [{"a": 1}, {"a": 2}]
    finally:
        pubsub.close()


# submit_bucket.lua


def test_submit_bucket_grants_then_refuses(client: redis.Redis, keys: Keys) -> None:
    def take(cost: int, *, partial: bool = False) -> list[int]:
        call = bucket_call(keys, OWNER, 1.0, 2.0, cost, partial=partial)
        reply: list[int] = run(client, "submit_bucket.lua", call)
        return reply

    assert take(2) == [2, 0]
    assert client.hget(keys.submit_bucket(OWNER), "tokens") == b"0"  # a new bucket is full
    assert 0 < client.pttl(keys.submit_bucket(OWNER)) <= 3000
    taken, wait_ms = take(1)
    assert taken == 0 and 500 < wait_ms <= 1000
    # Partial: as many whole tokens as there are (none yet); the bucket is left as it was.
    assert take(1, partial=True)[0] == 0
    client.delete(keys.submit_bucket(OWNER))
    taken, wait_ms = take(3, partial=True)
    assert taken == 2 and 500 < wait_ms <= 1000


# outbox_sweep.lua


def _sweep(client: redis.Redis, keys: Keys, now: float) -> list[str]:
    call = sweep_call(keys, "fast", now, 1.0, 1.0, 1.0, 100)
    return [i.decode() for i in run(client, "outbox_sweep.lua", call)]


def _lost(client: redis.Redis, keys: Keys, task_id: str, at: float, priority: int = 0) -> bytes:
    """A message whose copy is in the outbox but that is in no list and not un-acked."""
    envelope = b'{"body": "e30=", "headers": {"id": "%s"}}' % task_id.encode()
    queue = keys.broker_queues("fast")[priority]
    client.hset(keys.outbox, task_id, queue.encode() + b"\n" + envelope)
    client.zadd(keys.outbox_times("fast"), {task_id: at})
    return envelope


def test_sweep_pushes_a_lost_message_back_on_its_second_sighting(
    client: redis.Redis, keys: Keys
) -> None:
    t = time.time()
    lost = create(client, keys)
    envelope = _lost(client, keys, lost, t - 10, priority=2)
    held = create(client, keys)
    _lost(client, keys, held, t - 10)
    client.hset(keys.broker_unacked, "tag-1", b'[{"headers": {"id": "%s"}}]' % held.encode())
    ended = create(client, keys)
    _lost(client, keys, ended, t - 10)
    transition(client, keys, ended, "status", status=TaskStatus.COMPLETED)
    assert _sweep(client, keys, t) == []
    # The ended task left the outbox; the lost one has its first strike.
    assert client.hget(keys.outbox, ended) is None
    assert client.zscore(keys.outbox_times("fast"), ended) is None
    assert float(client.hget(keys.outbox_strikes, lost) or 0) == pytest.approx(t)
    assert client.hget(keys.outbox_strikes, held) is None
    assert _sweep(client, keys, t + 2) == [lost]
    queue = keys.broker_queues("fast")[2]
    assert client.lrange(queue, 0, -1) == [envelope]
    assert client.hget(keys.outbox_strikes, lost) is None
    assert client.zscore(keys.outbox_times("fast"), lost) == pytest.approx(t + 2)
    # Queued again: the queue has not drained past it, so the next sweep leaves it.
    assert _sweep(client, keys, t + 4) == []
    assert client.llen(queue) == 1


def test_sweep_pushes_back_a_stalled_started_task_that_nobody_holds(
    client: redis.Redis, keys: Keys
) -> None:
    t = time.time()
    task_id = create(client, keys)
    envelope = _lost(client, keys, task_id, t - 10)
    transition(client, keys, task_id, "status", status=TaskStatus.RUNNING)
    # Started: it moves to the running index; not stalled, so nothing more.
    assert _sweep(client, keys, t) == []
    assert client.zscore(keys.outbox_times("fast"), task_id) is None
    assert client.zscore(keys.outbox_running("fast"), task_id) == pytest.approx(t)
    client.hset(keys.task(task_id), "stalled", "true")
    assert _sweep(client, keys, t + 2) == []  # first strike
    assert _sweep(client, keys, t + 4) == [task_id]
    assert client.lrange(keys.broker_queues("fast")[0], 0, -1) == [envelope]
    assert client.hget(keys.outbox, task_id) is not None  # kept until the task ends
