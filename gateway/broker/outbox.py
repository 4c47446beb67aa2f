"""The outbox: brings back task messages the Redis broker lost in flight.

kombu's Redis transport takes a message off its queue with ``BRPOP`` and only then records it
as un-acked. A worker that dies (SIGKILL, OOM) or drops its broker connection while a ``BRPOP``
reply is on the wire loses that message: it is in no queue and not un-acked, so the visibility
timeout never brings it back, and its task would stay PENDING for good.

So the gateway keeps a copy of every message it publishes (``OutboxBroker``: hash
``Keys.outbox``, and per queue a sorted set ``Keys.outbox_times(queue)`` of publish times) and
every gateway sweeps (``watch_outbox``, ``shared/lua/outbox_sweep.lua``, atomic): a PENDING
task whose message is older than every message left in its queue (the queue has drained past
it) and is not un-acked anywhere was lost; seen so on two sweeps ``confirm_s`` apart (a message
between BRPOP and its un-acked entry is only briefly in neither), its copy is pushed back at the
consuming end of its queue.

A task that started keeps its copy until it ends (``Keys.outbox_running(queue)``): when its
worker dies, kombu's visibility timeout puts its message back in the queue, and from there a
worker can lose it the same way (the soak caught one: restored, taken by BRPOP, worker killed
before the un-acked entry). So a started task marked stalled (no heartbeat: its worker is gone)
whose message is not un-acked either has its copy pushed back the same way. If the message was
in fact still queued (a backlog), the task gets a second copy.

A task's copy leaves the outbox when the task ends, in the step that ends it
(``shared/lua/transition.lua``), so the outbox holds about as many copies as there are tasks
not ended (``size``, the ``taskgate_outbox_size`` gauge). The sweep drops the copies of tasks
that ended by another path (a record that expired, or was taken back after a refused batch).

A copy pushed back by mistake is harmless: a worker never runs a task whose record ended, and
waits while another run of it is alive (``worker.runner``).

It needs the records and the broker in the same Redis (the default); otherwise it is off.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.broker.message import TaskMessage
from gateway.broker.redis_broker import RedisBroker
from shared.errors import BrokerUnavailable
from shared.keys import Keys
from shared.records_batch import InlinePush
from shared.redis_client import raise_if_cancel_swallowed
from shared.scripts import ScriptCall, source

log = logging.getLogger("taskgate.redelivery")

# The script's text, read at import: never as blocking I/O on the loop.
OUTBOX_SWEEP_LUA = source("outbox_sweep.lua")


def outbox_key(keys: Keys) -> str:
    """The outbox hash (``Keys.outbox``)."""
    return keys.outbox


def sweep_call(
    keys: Keys,
    queue: str,
    now: float,
    min_age: float,
    margin: float,
    confirm: float,
    limit: int,
) -> ScriptCall:
    """``outbox_sweep.lua``'s KEYS and ARGV for ``queue`` (see its header)."""
    return ScriptCall(
        [
            keys.outbox,
            keys.outbox_times(queue),
            keys.broker_unacked,
            keys.outbox_strikes,
            keys.outbox_running(queue),
            keys.task_prefix,
            *keys.broker_queues(queue),
        ],
        [repr(now), repr(min_age), repr(margin), repr(confirm), limit],
    )


class OutboxBroker:
    """A ``RedisBroker`` that keeps a copy of each message before it publishes it."""

    def __init__(self, inner: RedisBroker, keys: Keys) -> None:
        self.inner = inner
        self.keys = keys
        self.client: aioredis.Redis = inner.client

    async def publish(self, messages: Sequence[TaskMessage]) -> None:
        """Copies first, then the messages, in one round trip (a pipeline runs in order, so a
        sweep never sees a message whose copy is missing)."""
        now = time.time()
        prepared = self.inner.envelopes(messages)
        copies: dict[str, bytes] = {}
        published_at: dict[str, dict[str, float]] = {}
        for msg, key, envelope in prepared:
            copies[msg.task_id] = key.encode() + b"\n" + envelope
            published_at.setdefault(msg.queue, {})[msg.task_id] = now
        try:
            async with asyncio.timeout(self.inner.timeout):
                async with self.client.pipeline(transaction=False) as pipe:
                    pipe.hset(self.keys.outbox, mapping=copies)  # type: ignore[arg-type]
                    for queue, members in published_at.items():
                        pipe.zadd(self.keys.outbox_times(queue), members)
                    for key, values in self.inner.by_list(prepared).items():
                        pipe.lpush(key, *values)
                    await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"broker unreachable: {type(exc).__name__}") from exc

    def inline(self, messages: Sequence[TaskMessage], snapshots: Sequence[bytes]) -> InlinePush:
        """``messages`` (with their tasks' PENDING ``snapshots``, JSON) as the broker part of
        the record script (``BatchRecords.create_args``): pushed, copied to the outbox and
        announced in the same atomic run that writes their records. The records' Redis is
        this one."""
        entries = [
            (key, envelope, self.keys.outbox_times(msg.queue), snapshot)
            for (msg, key, envelope), snapshot in zip(
                self.inner.envelopes(messages), snapshots, strict=True
            )
        ]
        return InlinePush(self.keys.outbox, time.time(), entries)

    async def size(self) -> int:
        """How many copies the outbox holds (one ``HLEN``); Redis errors are the caller's."""
        async with asyncio.timeout(self.inner.timeout):
            return int(await self.client.hlen(self.keys.outbox))

    async def ping(self) -> None:
        await self.inner.ping()

    async def queue_depths(self, queues: Sequence[str]) -> dict[str, int]:
        return await self.inner.queue_depths(queues)

    async def close(self) -> None:
        await self.inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def watch_outbox(
    broker: OutboxBroker,
    queues: Sequence[str],
    interval: float,
    *,
    margin: float = 1.0,
    limit: int = 500,
) -> None:
    """Sweep every ``interval`` seconds until cancelled; a Redis error skips one round."""
    script: Any = broker.client.register_script(OUTBOX_SWEEP_LUA)
    keys = broker.keys
    while True:
        raise_if_cancel_swallowed()
        await asyncio.sleep(interval)
        for queue in queues:
            call = sweep_call(keys, queue, time.time(), interval, margin, interval, limit)
            try:
                async with asyncio.timeout(max(interval, 3.0)):
                    pushed = await script(keys=call.keys, args=call.args)
            except (RedisError, OSError) as exc:
                log.debug("outbox sweep of %s skipped: %s", queue, type(exc).__name__)
                continue
            for raw in pushed:
                tid = raw.decode() if isinstance(raw, bytes) else str(raw)
                log.warning("task %s: its message was lost in flight; published it again", tid)
