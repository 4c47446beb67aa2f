"""Delayed tasks (``countdown``, ``eta``): held in Redis until due, then published.

Celery's own countdown publishes at once with an ``eta``; the worker holds the message un-acked
until then, and with the Redis broker a delay past the visibility timeout gets the message
delivered again and the task run twice (celery#2599, kombu#337). So taskgate does not give the
broker a delayed message: the record is written PENDING with its ``eta``, the message waits in
Redis (``Keys.delayed``: ids scored by when they are due, ``Keys.delayed_messages``: the
messages, in ``shared.delayed_layout``'s layout, which the producer writes too), and a gateway
publishes it when due (``watch_delayed``; one gateway at a time, by a short lock). A message is
removed from the hold only after the broker took it, so a gateway that dies half way publishes
it again at worst, and the record decides (a task runs once). A task cancelled or expired
before it is due is not published: its record ends then (CANCELLED, with ``error.type``
``Expired`` for the expired).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis

from gateway.broker.message import TaskMessage
from gateway.broker.redis_broker import Broker
from shared.delayed_layout import pack, unpack
from shared.errors import BrokerUnavailable
from shared.keys import Keys
from shared.records import AsyncRecords
from shared.redis_client import raise_if_cancel_swallowed
from shared.status import TaskStatus
from shared.store_errors import STORE_FAILURES

log = logging.getLogger("taskgate.delayed")

# Due messages moved per pass, and how long the mover's lock lasts (longer than a pass).
BATCH = 500
LOCK_MS = 10_000


class DelayedQueue:
    """A ``Broker`` for the accept path that holds messages until their task is due."""

    def __init__(self, client: aioredis.Redis, keys: Keys, due: dict[str, float]) -> None:
        self.client = client
        self.keys = keys
        self.due = due  # task id -> due time

    async def publish(self, messages: Sequence[TaskMessage]) -> None:
        if not messages:
            return
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hset(
                    self.keys.delayed_messages, mapping={m.task_id: pack(m) for m in messages}
                )
                pipe.zadd(self.keys.delayed, {m.task_id: self.due[m.task_id] for m in messages})
                await pipe.execute()
        except STORE_FAILURES as exc:
            raise BrokerUnavailable(f"task store unreachable: {type(exc).__name__}") from exc

    async def take_back(self, task_ids: Sequence[str]) -> None:
        """Remove held messages again (their accept was refused as a whole)."""
        await _release(self.client, self.keys, task_ids)

    async def ping(self) -> None:
        await self.client.ping()

    async def queue_depths(self, queues: Sequence[str]) -> dict[str, int]:
        return {}

    async def close(self) -> None:
        return None


async def _release(client: aioredis.Redis, keys: Keys, task_ids: Sequence[str]) -> None:
    """Take ``task_ids`` out of the hold (published, expired, or taken back)."""
    async with client.pipeline(transaction=True) as pipe:
        pipe.zrem(keys.delayed, *task_ids)
        pipe.hdel(keys.delayed_messages, *task_ids)
        await pipe.execute()


async def move_due(
    client: aioredis.Redis, keys: Keys, records: AsyncRecords, broker: Broker, now: float
) -> int:
    """Publish the messages that are due (if this gateway holds the lock); how many."""
    if not await client.set(keys.delayed_lock, "1", nx=True, px=LOCK_MS):
        return 0
    try:
        ids = [
            i.decode() if isinstance(i, bytes) else str(i)
            for i in await client.zrangebyscore(keys.delayed, "-inf", now, start=0, num=BATCH)
        ]
        if not ids:
            return 0
        raws = await client.hmget(keys.delayed_messages, ids)
        messages: list[TaskMessage] = []
        for raw in raws:
            if raw is None:
                continue
            message = unpack(raw if isinstance(raw, bytes) else str(raw).encode())
            if await _expired(records, message, now):
                continue
            messages.append(message)
        if messages:
            await broker.publish(messages)
        await _release(client, keys, ids)
        return len(messages)
    finally:
        await client.delete(keys.delayed_lock)


async def _expired(records: AsyncRecords, message: TaskMessage, now: float) -> bool:
    """A message whose ``expires`` passed before it was due: its record ends CANCELLED
    ``Expired`` (unless it ended already) and it is not published."""
    expires = message.headers.get("expires")
    if not isinstance(expires, str):
        return False
    if datetime.fromisoformat(expires).timestamp() > now:
        return False
    await records.transition(
        message.task_id,
        "status",
        status=TaskStatus.CANCELLED,
        only_if=(TaskStatus.PENDING,),
        fields={
            "finished_at": now,
            "error": {"type": "Expired", "message": "expired before it was due"},
        },
    )
    return True


async def watch_delayed(
    client: aioredis.Redis,
    keys: Keys,
    records: AsyncRecords,
    broker: Broker,
    interval: float = 0.25,
) -> None:
    """Runs until cancelled: every ``interval`` seconds, publish what is due."""
    while True:
        try:
            moved = await move_due(client, keys, records, broker, time.time())
            if moved:
                log.info("published %d delayed tasks that are due", moved)
        except BrokerUnavailable as exc:
            log.warning("delayed tasks not moved: %s", exc)
        except STORE_FAILURES as exc:
            log.warning("delayed tasks not moved: %s", type(exc).__name__)
        except Exception:
            # A bug must not stop the mover: delayed tasks would never be published.
            log.exception("delayed tasks not moved")
        raise_if_cancel_swallowed()
        await asyncio.sleep(interval)


def delays(subs: Sequence[Any], ids: Sequence[str]) -> dict[str, float]:
    """Task id -> due time, for the submissions that are delayed."""
    return {tid: s.due_at for s, tid in zip(subs, ids, strict=True) if s.due_at is not None}
