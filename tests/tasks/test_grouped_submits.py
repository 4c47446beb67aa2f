"""Submits in flight at once are grouped: written to Redis in a few pieces, each answered on
its own (its 429 included), with the outbox broker and with a plain one. Real redis-server; no
worker consumes these prefixes, so accepted tasks stay queued and can be counted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from gateway.broker.outbox import OutboxBroker, outbox_key
from gateway.broker.redis_broker import RedisBroker, redis_priority
from gateway.tasks.service import TaskService
from shared.errors import RateLimited, TaskgateError
from shared.records import AsyncRecords
from shared.redis_client import async_client
from shared.schema import decode_updates
from tests.support import fresh

BODY = {"task": "demo.count", "input": {"steps": 2}}


@pytest.fixture(params=["outbox", "plain"])
async def make_manager(
    request: pytest.FixtureRequest, env: dict[str, str]
) -> AsyncIterator[Callable[..., Awaitable[TaskService]]]:
    """Managers as the gateway builds them (``outbox``: the records' Redis is the broker, one
    script accepts) and as with a broker elsewhere (``plain``: records, push, publish)."""
    made: list[tuple[TaskService, Any]] = []

    async def make(**extra: str) -> TaskService:
        settings = fresh(env, **extra)
        client = async_client(settings.require_redis())
        broker: Any = RedisBroker(settings.require_redis(), settings.keys.broker_prefix)
        if request.param == "outbox":
            broker = OutboxBroker(broker, settings.keys)
        manager = TaskService(
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
    manager: TaskService, user: str, n: int
) -> list[dict[str, Any] | TaskgateError]:
    async def one() -> dict[str, Any] | TaskgateError:
        try:
            return dict(await manager.submit(user, BODY))
        except TaskgateError as exc:
            return exc

    return await asyncio.gather(*(one() for _ in range(n)))


async def queued(manager: TaskService) -> int:
    depths = await manager.broker.queue_depths(["fast"])
    return depths["fast"]


async def test_submits_in_flight_are_grouped_and_each_answered(
    make_manager: Callable[..., Awaitable[TaskService]],
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


async def test_group_beyond_the_bucket_gets_429_for_the_rest_only(
    make_manager: Callable[..., Awaitable[TaskService]],
) -> None:
    manager = await make_manager(
        TASKGATE_SUBMIT_RATE="10", TASKGATE_SUBMIT_BURST="10", TASKGATE_MAX_ACTIVE="0"
    )
    answers = await submit_all(manager, "bucket", 25)
    accepted = [a for a in answers if isinstance(a, dict)]
    limited = [a for a in answers if isinstance(a, RateLimited)]
    # The bucket holds 10; a few milliseconds may refill a fraction of one more.
    assert 10 <= len(accepted) <= 11
    assert len(accepted) + len(limited) == 25
    assert all(e.retry_after is not None and e.retry_after >= 1 for e in limited)
    assert await queued(manager) == len(accepted)


async def test_group_beyond_max_active_pushes_nothing_for_the_refused(
    make_manager: Callable[..., Awaitable[TaskService]],
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
    make_manager: Callable[..., Awaitable[TaskService]],
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
