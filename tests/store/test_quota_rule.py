"""One quota rule for both create paths (``quota.lua``, included by ``create.lua`` and
``create_batch.lua``): an owner at ``max_active`` whose active set holds ids of records that are
gone (expired unfinished, or taken back) can create again, and a create trims the owner's
tasks and ended sets of ids older than the retention, on the single path (``AsyncRecords.create``)
and on the batch path (``BatchRecords``, with and without the broker part)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any
from uuid import uuid4

import orjson
import pytest
import redis

from gateway.broker.message import build_task_message
from gateway.broker.outbox import OutboxBroker
from gateway.broker.redis_broker import RedisBroker
from shared.keys import Keys
from shared.records import AsyncRecords, CreateCode, new_record_fields
from shared.records_batch import BatchRecords, pending_common, pending_snapshot
from shared.redis_client import async_client
from shared.resp import Pipeline
from tests.support import RedisServer

RETENTION = 600
OWNER = "quinn"
PATHS = ["single", "batch", "batch-with-broker"]

# Creates ``n`` records of OWNER under ``max_active``; one code each.
Create = Callable[[int, int], Coroutine[Any, Any, list[CreateCode]]]


@pytest.fixture(params=PATHS)
async def create(
    request: pytest.FixtureRequest, redis_server: RedisServer, keys: Keys
) -> AsyncIterator[Create]:
    aclient = async_client(redis_server.url)
    pipe = Pipeline(redis_server.url)
    broker = OutboxBroker(RedisBroker(redis_server.url, keys.broker_prefix), keys)
    records = AsyncRecords(aclient, keys, RETENTION)
    batch = BatchRecords(aclient, keys, RETENTION, pipe)

    async def single(n: int, max_active: int) -> list[CreateCode]:
        codes = []
        for _ in range(n):
            fields = new_record_fields(str(uuid4()), "demo.count", "fast", time.time())
            code, _ = await records.create(OWNER, fields, max_active)
            codes.append(code)
        return codes

    async def many(n: int, max_active: int) -> list[CreateCode]:
        now = time.time()
        common = pending_common(now)
        rows = [{"task_id": str(uuid4()), "task": "demo.count", "queue": "fast"} for _ in range(n)]
        inline = None
        if request.param == "batch-with-broker":
            messages = [build_task_message(r["task_id"], "demo.count", "fast") for r in rows]
            snaps = [orjson.dumps(pending_snapshot(common, r)) for r in rows]
            inline = broker.inline(messages, snaps)
        async with batch.runs(1) as runs:
            await runs.send(batch.create_args(OWNER, common, rows, now, max_active, inline))
            (reply,) = await runs.replies()
        return [CreateCode(int(c)) for c in reply]

    try:
        yield single if request.param == "single" else many
    finally:
        pipe.close()
        await broker.close()
        await aclient.aclose()


def gone_ids(client: redis.Redis, keys: Keys, n: int) -> list[str]:
    """``n`` ids in the owner's active set whose records do not exist (expired unfinished)."""
    ids = [f"gone-{uuid4()}" for _ in range(n)]
    client.zadd(keys.user_active(OWNER), dict.fromkeys(ids, time.time() - 60))
    return ids


def active(client: redis.Redis, keys: Keys) -> set[str]:
    members: list[bytes] = client.zrange(keys.user_active(OWNER), 0, -1)  # type: ignore[assignment]
    return {m.decode() for m in members}


async def test_an_owner_at_quota_with_records_gone_can_create(
    create: Create, client: redis.Redis, keys: Keys
) -> None:
    gone = gone_ids(client, keys, 3)
    assert await create(1, 3) == [CreateCode.CREATED]
    assert not active(client, keys) & set(gone)
    assert len(active(client, keys)) == 1


async def test_records_gone_make_room_for_a_run_that_needs_more_than_is_left(
    create: Create, client: redis.Redis, keys: Keys
) -> None:
    assert await create(2, 5) == [CreateCode.CREATED] * 2
    gone_ids(client, keys, 2)  # 4 of 5 taken, 2 of them by records gone
    assert await create(3, 5) == [CreateCode.CREATED] * 3
    assert len(active(client, keys)) == 5
    assert all(client.exists(keys.task(t)) for t in active(client, keys))


async def test_an_owner_at_quota_with_every_record_alive_is_refused(
    create: Create, client: redis.Redis, keys: Keys
) -> None:
    assert await create(2, 2) == [CreateCode.CREATED] * 2
    before = active(client, keys)
    assert await create(1, 2) == [CreateCode.AT_QUOTA]
    assert active(client, keys) == before


async def test_a_create_trims_the_owners_indexes_to_the_retention(
    create: Create, client: redis.Redis, keys: Keys
) -> None:
    now = time.time()
    old, recent = now - RETENTION - 60, now - RETENTION + 60
    for name in (keys.user_tasks(OWNER), keys.user_ended(OWNER)):
        client.zadd(name, {"old": old, "recent": recent})
    assert await create(1, 0) == [CreateCode.CREATED]
    for name in (keys.user_tasks(OWNER), keys.user_ended(OWNER)):
        assert client.zscore(name, "old") is None, name
        assert client.zscore(name, "recent") == recent, name
    assert client.zcard(keys.user_tasks(OWNER)) == 2  # "recent" and the new one


async def test_a_refused_create_trims_nothing(
    create: Create, client: redis.Redis, keys: Keys
) -> None:
    assert await create(1, 1) == [CreateCode.CREATED]
    old = time.time() - RETENTION - 60
    client.zadd(keys.user_ended(OWNER), {"old": old})
    assert await create(1, 1) == [CreateCode.AT_QUOTA]
    assert client.zscore(keys.user_ended(OWNER), "old") == old
