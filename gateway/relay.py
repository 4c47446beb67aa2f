"""The relay: one background task that moves updates from Redis pub/sub to users' rooms.

It subscribes to the progress channel and hands each valid update to ``deliver``. A malformed
message is logged and skipped. When the connection drops, it reconnects with capped exponential
backoff and jitter, then calls ``resync`` so that whatever changed while it was away is re-sent
from the records (the records are the truth; pub/sub is only the fast path).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterator

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from shared.redis_client import async_client
from shared.schema import Update, decode_update

log = logging.getLogger("taskgate.relay")

Deliver = Callable[[Update], Awaitable[None]]
Resync = Callable[[], Awaitable[None]]

BACKOFF_START_S = 0.1
BACKOFF_CAP_S = 5.0


def backoff_delays(start: float = BACKOFF_START_S, cap: float = BACKOFF_CAP_S) -> Iterator[float]:
    """Full-jitter exponential backoff: uniform(0, min(cap, start * 2**n))."""
    n = 0
    while True:
        yield random.uniform(0, min(cap, start * (2**n)))
        n += 1


class Relay:
    def __init__(
        self, url: str, channel: str, deliver: Deliver, resync: Resync | None = None
    ) -> None:
        self.url = url
        self.channel = channel
        self.deliver = deliver
        self.resync = resync
        self.connected = asyncio.Event()
        self.delivered = 0
        self.skipped = 0
        self.reconnects = 0

    async def run(self) -> None:
        """Run until cancelled; never returns on a Redis error."""
        delays = backoff_delays()
        first = True
        while True:
            client = async_client(self.url, socket_connect_timeout=3.0)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.connected.set()
                if not first:
                    self.reconnects += 1
                    log.info("relay reconnected to %s", self.channel)
                    if self.resync is not None:
                        await self.resync()
                first = False
                delays = backoff_delays()
                await self._pump(pubsub)
            except (RedisError, OSError) as exc:
                self.connected.clear()
                delay = next(delays)
                log.warning("relay lost Redis (%s); retrying in %.2fs", type(exc).__name__, delay)
                await asyncio.sleep(delay)
            finally:
                self.connected.clear()
                try:
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                    await client.aclose()
                except (RedisError, OSError):
                    pass

    async def _pump(self, pubsub: aioredis.client.PubSub) -> None:
        while True:
            message = await pubsub.get_message(timeout=None)
            if message is None or message.get("type") != "message":
                continue
            try:
                update = decode_update(message["data"])
            except ValueError as exc:
                self.skipped += 1
                log.warning("relay skipped a malformed message: %s", exc)
                continue
            try:
                await self.deliver(update)
                self.delivered += 1
            except Exception:
                log.exception("relay could not deliver an update of %s", update["owner"])
