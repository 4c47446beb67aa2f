"""A task that ends leaves the outbox in the step that ends it (``transition.lua``), through the
wrappers workers and the gateway call (``SyncRecords``, ``AsyncRecords``); the sweep
(``outbox_sweep.lua``) stays the safety net for copies whose task ended by another path.

Records are created as the gateway creates them with the outbox broker: one
``create_batch.lua`` run with the broker part (``OutboxBroker.inline``)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any
from uuid import uuid4

import orjson
import pytest
import redis

from gateway.broker.message import build_task_message
from gateway.broker.outbox import OutboxBroker, sweep_call
from gateway.broker.redis_broker import RedisBroker
from shared.keys import Keys
from shared.records import (
    AsyncRecords,
    CreateCode,
    SyncRecords,
    TransitionCode,
    outbox_index_prefixes,
)
from shared.records_batch import BatchRecords, pending_common, pending_snapshot
from shared.redis_client import async_client
from shared.resp import Pipeline
from shared.scripts import source
from shared.status import TaskStatus
from tests.support import RedisServer

RETENTION = 600
OWNER = "otto"
QUEUE = "fast"

Create = Callable[[int], Coroutine[Any, Any, list[str]]]


@pytest.fixture
async def create(redis_server: RedisServer, keys: Keys) -> AsyncIterator[Create]:
    """Creates ``n`` PENDING records of ``OWNER`` on ``QUEUE`` with their messages pushed and
    their outbox copies kept, in one run; returns their ids (pushed in that order)."""
    aclient = async_client(redis_server.url)
    pipe = Pipeline(redis_server.url)
    broker = OutboxBroker(RedisBroker(redis_server.url, keys.broker_prefix), keys)
    batch = BatchRecords(aclient, keys, RETENTION, pipe)

    async def make(n: int) -> list[str]:
        now = time.time()
        common = pending_common(now)
        rows = [{"task_id": str(uuid4()), "task": "demo.count", "queue": QUEUE} for _ in range(n)]
        messages = [build_task_message(r["task_id"], "demo.count", QUEUE) for r in rows]
        snaps = [orjson.dumps(pending_snapshot(common, r)) for r in rows]
        call = batch.create_args(OWNER, common, rows, now, 0, broker.inline(messages, snaps))
        async with batch.runs(1) as runs:
            await runs.send(call)
            assert await runs.replies() == [[CreateCode.CREATED] * n]
        return [r["task_id"] for r in rows]

    try:
        yield make
    finally:
        pipe.close()
        await broker.close()
        await aclient.aclose()


def outbox_entries(client: redis.Redis, keys: Keys, task_id: str) -> dict[str, bool]:
    """Where the task is in the outbox: its copy, its publish time, its started entry, its
    strikes."""
    return {
        "copy": client.hexists(keys.outbox, task_id),
        "at": client.zscore(keys.outbox_times(QUEUE), task_id) is not None,
        "running": client.zscore(keys.outbox_running(QUEUE), task_id) is not None,
        "strikes": client.hexists(keys.outbox_strikes, task_id),
    }


NOWHERE = {"copy": False, "at": False, "running": False, "strikes": False}


def sweep(client: redis.Redis, keys: Keys, now: float) -> list[bytes]:
    call = sweep_call(keys, QUEUE, now, 1.0, 1.0, 1.0, 100)
    pushed: list[bytes] = client.register_script(source("outbox_sweep.lua"))(
        keys=call.keys, args=call.args
    )
    return pushed


def take(client: redis.Redis, keys: Keys) -> bytes:
    """What a worker's BRPOP does: the message at the consuming end of the queue's first list
    (by priority) that holds one."""
    for name in keys.broker_queues(QUEUE):
        message = client.rpop(name)
        if isinstance(message, bytes):
            return message
    raise AssertionError("the queue is empty")


async def running_task(create: Create, client: redis.Redis, keys: Keys) -> tuple[str, SyncRecords]:
    """A task created, taken from its queue and RUNNING, as a worker has it; and the records
    (what workers call)."""
    (task_id,) = await create(1)
    take(client, keys)
    records = SyncRecords(client, keys, RETENTION)
    assert records.transition(task_id, "status", status=TaskStatus.RUNNING).applied
    return task_id, records


def test_the_index_prefixes_join_with_the_queue() -> None:
    keys = Keys(prefix="t-prefixes:")
    times, started = outbox_index_prefixes(keys)
    assert times + QUEUE == keys.outbox_times(QUEUE)
    assert started + QUEUE == keys.outbox_running(QUEUE)


async def test_a_task_moved_to_completed_leaves_no_copy(
    create: Create, client: redis.Redis, keys: Keys
) -> None:
    (task_id,) = await create(1)
    assert outbox_entries(client, keys, task_id) == {**NOWHERE, "copy": True, "at": True}
    take(client, keys)
    records = SyncRecords(client, keys, RETENTION)  # what workers call
    assert records.transition(task_id, "status", status=TaskStatus.RUNNING).applied
    assert client.hexists(keys.outbox, task_id)  # kept while it runs
    done = records.transition(task_id, "status", status=TaskStatus.COMPLETED, fields={"result": 1})
    assert done.applied
    assert outbox_entries(client, keys, task_id) == NOWHERE
    assert client.hlen(keys.outbox) == 0


async def test_a_started_task_watched_by_the_sweep_leaves_every_index_when_it_fails(
    create: Create, client: redis.Redis, keys: Keys
) -> None:
    task_id, records = await running_task(create, client, keys)
    t = time.time() + 5
    # The sweep moves it to the started index; stalled and held by nobody, it gets a strike.
    assert sweep(client, keys, t) == []
    client.hset(keys.task(task_id), "stalled", "true")
    assert sweep(client, keys, t + 2) == []
    assert outbox_entries(client, keys, task_id) == {**NOWHERE, "copy": True, "running": True,
                                                     "strikes": True}  # fmt: skip
    assert records.transition(task_id, "status", status=TaskStatus.FAILED).applied
    assert outbox_entries(client, keys, task_id) == NOWHERE


async def test_a_task_cancelled_in_its_queue_keeps_only_its_publish_time_until_it_is_taken(
    create: Create, redis_server: RedisServer, client: redis.Redis, keys: Keys
) -> None:
    """Its message still waits in the queue, where the sweep reads the tail's publish time as
    how far the queue drained: that entry stays until the sweep sees the queue past it, so a
    message lost before it is still found."""
    lost, cancelled = await create(2)
    # The older message is lost in flight: taken from the tail, in no queue, not un-acked.
    take(client, keys)
    published = client.zscore(keys.outbox_times(QUEUE), lost)
    assert published is not None
    client.zadd(keys.outbox_times(QUEUE), {lost: published - 10})
    aclient = async_client(redis_server.url)
    try:
        records = AsyncRecords(aclient, keys, RETENTION)  # what the gateway calls
        result = await records.transition(
            cancelled, "cancel", owner=OWNER, status=TaskStatus.CANCELLED
        )
    finally:
        await aclient.aclose()
    assert result.applied
    assert outbox_entries(client, keys, cancelled) == {**NOWHERE, "at": True}
    # The cancelled task's message at the tail still tells how far the queue drained.
    t = time.time() + 5
    assert sweep(client, keys, t) == []
    assert sweep(client, keys, t + 2) == [lost.encode()]
    assert outbox_entries(client, keys, cancelled) == {**NOWHERE, "at": True}
    # Workers take both messages (the cancelled one is dropped: its record ended); the queue
    # drained past it, and the sweep drops its entry.
    take(client, keys)
    take(client, keys)
    sweep(client, keys, t + 4)
    assert outbox_entries(client, keys, cancelled) == NOWHERE


async def test_a_record_whose_queue_is_not_text_still_ends_and_loses_its_copy(
    create: Create, client: redis.Redis, keys: Keys
) -> None:
    task_id, records = await running_task(create, client, keys)
    client.hset(keys.task(task_id), "queue", b"{not json")
    result = records.transition(task_id, "status", status=TaskStatus.COMPLETED)
    assert result.code == TransitionCode.APPLIED
    assert not client.hexists(keys.outbox, task_id)


async def test_the_sweep_drops_the_copy_of_a_task_whose_record_expired(
    create: Create, client: redis.Redis, keys: Keys
) -> None:
    """The safety net: a task that ended by no transition (its record expired unfinished)."""
    (task_id,) = await create(1)
    take(client, keys)
    client.delete(keys.task(task_id))
    assert sweep(client, keys, time.time() + 5) == []
    assert outbox_entries(client, keys, task_id) == NOWHERE
