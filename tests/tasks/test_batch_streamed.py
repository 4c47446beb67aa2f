"""A batch parsed as it is written (``Acceptor.accept_streamed``): with no submit bucket and the
one-script accept, chunk k+1 is parsed while Redis writes chunk k. Its answers are those of the
batch parsed whole first; a failure after chunks went out leaves nothing of it accepted. Real
redis-server; no worker consumes these prefixes, so accepted tasks stay queued."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from gateway.broker.outbox import OutboxBroker
from gateway.broker.redis_broker import RedisBroker, redis_priority
from gateway.tasks.service import TaskService
from gateway.tasks.submission import Submission
from shared.errors import TaskgateError
from shared.records import AsyncRecords
from shared.redis_client import async_client, sync_client
from tests.support import fresh

Make = Callable[..., Awaitable[TaskService]]


class Hooked(TaskService):
    """A service whose parse calls ``hook`` with each body first (fault injection and a look
    at Redis mid-batch; the parse itself is the real one)."""

    hook: Callable[[Any], None] | None = None

    def _parse(self, body: Any) -> Submission:
        if self.hook is not None:
            self.hook(body)
        return super()._parse(body)


@pytest.fixture
async def make_manager(env: dict[str, str]) -> AsyncIterator[Make]:
    made: list[tuple[TaskService, Any]] = []

    async def make(**extra: str) -> TaskService:
        settings = fresh(env, **extra)
        client = async_client(settings.require_redis())
        broker = OutboxBroker(
            RedisBroker(settings.require_redis(), settings.keys.broker_prefix), settings.keys
        )
        manager = Hooked(
            settings, AsyncRecords(client, settings.keys, settings.retention_s), broker
        )
        made.append((manager, client))
        return manager

    yield make
    for manager, client in made:
        await manager.close()
        await manager.broker.close()
        await client.aclose()


def body(i: int) -> dict[str, Any]:
    return {"task": "demo.count", "input": {"steps": 1 + i % 50}}


def bad_batch() -> list[Any]:
    """2,600 items: bad ones at the start, around the first chunk's edge (250), a whole chunk
    of bad ones (1,250-2,249: a run with nothing in it), and the last."""
    items: list[Any] = [body(i) for i in range(2600)]
    for i in (0, 249, 250, 251, 2599):
        items[i] = {"task": "demo.count", "input": {"steps": -1}}
    for i in range(1250, 2250):
        items[i] = {"task": "no.such.task", "input": {}} if i % 2 else "not an object"
    return items


async def queued(manager: TaskService) -> list[bytes]:
    broker: Any = manager.broker
    key = broker.inner.queue_key("fast", redis_priority(0))
    # kombu pops the tail: the first message in is the last element.
    return list(reversed(await manager.records.client.lrange(key, 0, -1)))


async def test_a_streamed_batch_answers_as_one_parsed_whole(make_manager: Make) -> None:
    """The same items through the streamed path and through the parse-everything-first path
    (a keyed batch is parsed whole first): the same error at the same places, every other item
    accepted, its message queued in the batch's order and its record listed."""
    streamed = await make_manager(TASKGATE_SUBMIT_RATE="0", TASKGATE_MAX_ACTIVE="0")
    whole = await make_manager(TASKGATE_SUBMIT_RATE="0", TASKGATE_MAX_ACTIVE="0")
    items = bad_batch()
    got = await streamed.submit_many("s", items)
    want = await whole.submit_many("s", items, idempotency_key="whole")

    def shape(answers: list[Any]) -> list[Any]:
        return [
            (a.code, a.message) if isinstance(a, TaskgateError) else a["status"] for a in answers
        ]

    assert shape(got) == shape(want)
    ok = [a for a in got if not isinstance(a, TaskgateError)]
    assert len(ok) == 2600 - 5 - 1000
    messages = await queued(streamed)
    assert len(messages) == len(ok)
    for answer, message in zip(ok, messages, strict=True):
        assert answer["task_id"].encode() in message
    listed = await streamed.records.client.zcard(streamed.settings.keys.user_tasks("s"))
    assert listed == len(ok)
    assert len({a["task_id"] for a in ok}) == len(ok)


async def test_redis_writes_the_first_chunk_before_the_last_item_is_parsed(
    make_manager: Make,
) -> None:
    """When the last item is parsed, the first chunk's record is already in Redis (parsed whole
    first, nothing is written until every item is parsed)."""
    manager = await make_manager(TASKGATE_SUBMIT_RATE="0", TASKGATE_MAX_ACTIVE="0")
    assert isinstance(manager, Hooked)
    # The first chunk (250) holds one valid item, so its run is small and written at once.
    items: list[Any] = [{"task": "no.such.task", "input": {}}] * 249 + [body(249)]
    items += [body(i) for i in range(250, 1500)]
    last = items[-1]
    redis = sync_client(manager.settings.require_redis())
    tasks_key = manager.settings.keys.user_tasks("early")
    seen: list[int] = []

    def look(b: Any) -> None:
        if b is last:
            deadline = time.monotonic() + 5
            while not redis.zcard(tasks_key) and time.monotonic() < deadline:
                time.sleep(0.01)
            seen.append(int(redis.zcard(tasks_key)))

    manager.hook = look
    try:
        answers = await manager.submit_many("early", items)
    finally:
        redis.close()
    assert seen and seen[0] >= 1
    assert sum(1 for a in answers if not isinstance(a, TaskgateError)) == 1 + 1250


async def test_a_failure_parsing_a_later_chunk_takes_back_the_chunks_written(
    make_manager: Make,
) -> None:
    """An unexpected error while parsing the third chunk (two runs already sent): the error
    goes to the caller, and none of the batch's tasks stays accepted."""
    manager = await make_manager(TASKGATE_SUBMIT_RATE="0", TASKGATE_MAX_ACTIVE="0")
    assert isinstance(manager, Hooked)

    items = [body(i) for i in range(2000)]

    def explode(b: Any) -> None:
        if b is items[1600]:
            raise RuntimeError("parser bug")

    manager.hook = explode
    with pytest.raises(RuntimeError, match="parser bug"):
        await manager.submit_many("boom", items)
    manager.hook = None
    keys = manager.settings.keys
    client = manager.records.client
    assert await client.zcard(keys.user_tasks("boom")) == 0
    assert await client.zcard(keys.user_active("boom")) == 0
    assert await manager.list_tasks("boom") == []
    # The same batch without the fault goes through whole.
    answers = await manager.submit_many("boom", items)
    assert all(not isinstance(a, TaskgateError) for a in answers)
    assert await client.zcard(keys.user_tasks("boom")) == 2000
