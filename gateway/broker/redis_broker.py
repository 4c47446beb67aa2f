"""Publishing task messages to the broker, asynchronously, with no blocking call.

``RedisBroker`` speaks kombu's Redis transport directly through redis.asyncio: an ``LPUSH`` of
the JSON envelope onto the queue's list (the priority picks the list). A failure raises
``BrokerUnavailable``; nothing is retried silently, the caller decides.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from redis.exceptions import RedisError

from gateway.broker.message import TaskMessage
from shared.errors import BrokerUnavailable
from shared.priority import MAX_PRIORITY as MAX_PRIORITY
from shared.priority import redis_priority as redis_priority
from shared.redis_client import async_client

# Must match the Celery app's ``priority_steps`` and kombu's separator for priority lists.
_PRIORITY_SEP = "\x06\x16"


class Broker(Protocol):
    async def publish(self, messages: Sequence[TaskMessage]) -> None: ...

    async def ping(self) -> None: ...

    async def queue_depths(self, queues: Sequence[str]) -> dict[str, int]: ...

    async def close(self) -> None: ...


class RedisBroker:
    """kombu Redis transport, async. ``prefix`` is kombu's ``global_keyprefix``."""

    def __init__(self, url: str, prefix: str, *, timeout: float = 3.0) -> None:
        self.prefix = prefix
        self.timeout = timeout
        self.client = async_client(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=15,
        )

    def queue_key(self, queue: str, broker_priority: int) -> str:
        base = f"{self.prefix}{queue}"
        return f"{base}{_PRIORITY_SEP}{broker_priority}" if broker_priority else base

    def envelopes(self, messages: Sequence[TaskMessage]) -> list[tuple[TaskMessage, str, bytes]]:
        """Each message with the list it goes to and its envelope, encoded once."""
        out = []
        for msg in messages:
            pri = redis_priority(msg.priority)
            out.append((msg, self.queue_key(msg.queue, pri), msg.redis_envelope(pri)))
        return out

    @staticmethod
    def by_list(prepared: Sequence[tuple[TaskMessage, str, bytes]]) -> dict[str, list[bytes]]:
        lists: dict[str, list[bytes]] = {}
        for _, key, envelope in prepared:
            lists.setdefault(key, []).append(envelope)
        return lists

    async def publish(self, messages: Sequence[TaskMessage]) -> None:
        """Push every message in one round trip (one multi-value ``LPUSH`` per list, in order:
        the first message is consumed first); raise ``BrokerUnavailable``."""
        lists = self.by_list(self.envelopes(messages))
        try:
            async with asyncio.timeout(self.timeout):
                if len(lists) == 1:
                    ((key, values),) = lists.items()
                    await self.client.lpush(key, *values)
                    return
                async with self.client.pipeline(transaction=False) as pipe:
                    for key, values in lists.items():
                        pipe.lpush(key, *values)
                    await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            raise BrokerUnavailable(f"broker unreachable: {type(exc).__name__}") from exc

    async def ping(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await self.client.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            raise BrokerUnavailable(f"broker unreachable: {type(exc).__name__}") from exc

    async def queue_depths(self, queues: Sequence[str]) -> dict[str, int]:
        async with self.client.pipeline(transaction=False) as pipe:
            for q in queues:
                for pri in range(MAX_PRIORITY + 1):
                    pipe.llen(self.queue_key(q, pri))
            sizes = await pipe.execute()
        steps = MAX_PRIORITY + 1
        return {q: int(sum(sizes[i * steps : (i + 1) * steps])) for i, q in enumerate(queues)}

    async def close(self) -> None:
        await self.client.aclose()
