"""The relay: one background task that moves updates from Redis pub/sub to users' rooms.

It subscribes to the progress channel and hands each valid update to ``deliver``. A malformed
message is logged and skipped. When the connection drops, it reconnects with capped exponential
backoff and jitter, then calls ``resync`` so that whatever changed while it was away is re-sent
from the records (the records are the truth; pub/sub is only the fast path).

A connection can also die silently (a frozen server, a dropped NAT entry): no error, just no
messages. So when the channel has been quiet for ``ping_interval`` seconds the relay sends a
PING on the subscribed connection, and if nothing at all comes back within ``ping_timeout``
it treats the connection as lost.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterator

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from shared.redis_client import async_client, raise_if_cancel_swallowed
from shared.schema import Update, decode_update

log = logging.getLogger("taskgate.relay")

Deliver = Callable[[Update], Awaitable[None]]
Resync = Callable[[], Awaitable[None]]

BACKOFF_START_S = 0.1
BACKOFF_CAP_S = 5.0
PING_INTERVAL_S = 5.0
PING_TIMEOUT_S = 3.0
CONNECT_TIMEOUT_S = 3.0


def backoff_delays(start: float = BACKOFF_START_S, cap: float = BACKOFF_CAP_S) -> Iterator[float]:
    """Full-jitter exponential backoff: uniform(0, min(cap, start * 2**n))."""
    n = 0
    while True:
        yield random.uniform(0, min(cap, start * (2**n)))
        n += 1


class Relay:
    def __init__(
        self,
        url: str,
        channel: str,
        deliver: Deliver,
        resync: Resync | None = None,
        *,
        ping_interval: float = PING_INTERVAL_S,
        ping_timeout: float = PING_TIMEOUT_S,
    ) -> None:
        self.url = url
        self.channel = channel
        self.deliver = deliver
        self.resync = resync
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.connected = asyncio.Event()
        self.delivered = 0
        self.skipped = 0
        self.reconnects = 0
        self.resyncs = 0

    async def run(self) -> None:
        """Run until cancelled; never returns on a Redis error."""
        delays = backoff_delays()
        first = True
        while True:
            client = async_client(
                self.url,
                socket_connect_timeout=CONNECT_TIMEOUT_S,
                # Bounds the handshake and SUBSCRIBE on a frozen server; reads of messages pass
                # their own timeout.
                socket_timeout=CONNECT_TIMEOUT_S + self.ping_timeout,
            )
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S + self.ping_timeout):
                    await pubsub.subscribe(self.channel)
                raise_if_cancel_swallowed()
                self.connected.set()
                if not first:
                    self.reconnects += 1
                    log.info("relay reconnected to %s", self.channel)
                    await self._resync()
                first = False
                delays = backoff_delays()
                await self._pump(pubsub)
            except (RedisError, OSError) as exc:  # TimeoutError is an OSError
                self.connected.clear()
                delay = next(delays)
                log.warning("relay lost Redis (%s); retrying in %.2fs", type(exc).__name__, delay)
                await asyncio.sleep(delay)
            finally:
                self.connected.clear()
                await _close(pubsub, client)

    async def _resync(self) -> None:
        if self.resync is None:
            return
        try:
            await self.resync()
            self.resyncs += 1
        except (RedisError, OSError):
            raise  # the connection is gone again: reconnect, then resync again
        except Exception:
            log.exception("relay resync failed; live updates continue")

    async def _pump(self, pubsub: aioredis.client.PubSub) -> None:
        loop = asyncio.get_running_loop()
        ping_sent: float | None = None
        while True:
            wait = self.ping_interval if ping_sent is None else self.ping_timeout
            message = await pubsub.get_message(timeout=wait)
            raise_if_cancel_swallowed()
            if message is None:
                if ping_sent is not None and loop.time() - ping_sent >= self.ping_timeout:
                    raise RedisConnectionError(
                        f"no answer to PING within {self.ping_timeout:g}s (silently dead?)"
                    )
                if ping_sent is None:
                    await pubsub.ping()
                    ping_sent = loop.time()
                continue
            ping_sent = None  # anything that arrives proves the connection alive
            if message.get("type") != "message":
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


async def _close(pubsub: aioredis.client.PubSub, client: aioredis.Redis) -> None:
    try:
        async with asyncio.timeout(1.0):
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            await client.aclose()
    except (RedisError, OSError):
        pass
