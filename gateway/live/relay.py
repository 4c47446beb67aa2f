"""The relay: one background task that moves updates from Redis pub/sub to users' rooms.

It subscribes to the progress channel (``gateway.live.subscriber``: a bare protocol that queues all
replies of a read at once, instead of redis-py's per-message machinery) and hands each valid
update to ``deliver``. A malformed message is logged and skipped. A message for a user nobody
here listens to (``listening``: no socket of theirs on this gateway, no caller waiting for a
result) is dropped unparsed, from its head alone: with several gateways each one receives every
update, and most are not its users'.

When the connection drops, it reconnects with capped exponential backoff and jitter, then calls
``resync`` so that whatever changed while it was away is re-sent from the records (the records
are the truth; pub/sub is only the fast path).

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

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from gateway.live.subscriber import Subscriber
from shared.schema import Update, decode_updates, owner_of

log = logging.getLogger("taskgate.relay")

Deliver = Callable[[Update], Awaitable[None]]
Resync = Callable[[], Awaitable[None]]
Listening = Callable[[str], bool]

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
        listening: Listening | None = None,
        ping_interval: float = PING_INTERVAL_S,
        ping_timeout: float = PING_TIMEOUT_S,
    ) -> None:
        self.url = url
        self.channel = channel
        self.deliver = deliver
        self.resync = resync
        self.listening = listening
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.connected = asyncio.Event()
        self.delivered = 0
        self.skipped = 0
        self.unheard = 0
        self.reconnects = 0
        self.resyncs = 0

    async def run(self) -> None:
        """Run until cancelled; never returns on a Redis error."""
        delays = backoff_delays()
        first = True
        while True:
            sub = Subscriber(self.url)
            try:
                # Bounds the handshake and SUBSCRIBE on a frozen server.
                async with asyncio.timeout(CONNECT_TIMEOUT_S + self.ping_timeout):
                    await sub.connect(CONNECT_TIMEOUT_S)
                    await sub.subscribe(self.channel)
                self.connected.set()
                if not first:
                    self.reconnects += 1
                    log.info("relay reconnected to %s", self.channel)
                    await self._resync()
                first = False
                delays = backoff_delays()
                await self._pump(sub)
            except (RedisError, OSError) as exc:  # TimeoutError is an OSError
                self.connected.clear()
                delay = next(delays)
                log.warning("relay lost Redis (%s); retrying in %.2fs", type(exc).__name__, delay)
                await asyncio.sleep(delay)
            except Exception:
                # A bug, not Redis: the relay starts over (and resyncs) rather than stop for
                # good, which would leave every client without updates.
                self.connected.clear()
                delay = next(delays)
                log.exception("relay failed; starting over in %.2fs", delay)
                await asyncio.sleep(delay)
            finally:
                self.connected.clear()
                sub.close()

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

    async def _pump(self, sub: Subscriber) -> None:
        pinged = False
        while True:
            try:
                async with asyncio.timeout(self.ping_timeout if pinged else self.ping_interval):
                    replies = await sub.replies()
            except TimeoutError:
                if pinged:
                    raise RedisConnectionError(
                        f"no answer to PING within {self.ping_timeout:g}s (silently dead?)"
                    ) from None
                sub.ping()
                pinged = True
                continue
            pinged = False  # anything that arrives proves the connection alive
            for reply in replies:
                if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
                    await self._handle(reply[2])

    async def _handle(self, data: bytes) -> None:
        if self.listening is not None:
            owner = owner_of(data)
            if owner is not None and not self.listening(owner):
                self.unheard += 1
                return
        try:
            updates = decode_updates(data)
        except ValueError as exc:
            self.skipped += 1
            log.warning("relay skipped a malformed message: %s", exc)
            return
        for update in updates:
            try:
                await self.deliver(update)
                self.delivered += 1
            except Exception:
                log.exception("relay could not deliver an update of %s", update["owner"])
