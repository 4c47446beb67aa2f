"""A Redis pub/sub subscriber on a bare asyncio protocol, for the relay's hot path.

redis-py's ``PubSub.get_message`` costs tens of microseconds of Python per message (a health
check, the retry wrapper, a timeout context, a response callback, a dict per message) and one
wake-up of the reading task per message. Here the protocol feeds what the socket delivered to
hiredis's reader and queues every complete reply at once; the relay wakes once per read and
takes them all. Only what a subscriber needs is spoken: AUTH, SUBSCRIBE, PING.

URLs: ``redis://``, ``rediss://`` (TLS) and ``unix://``, with user and password as redis-py
reads them (``redis.asyncio.connection.parse_url``); ``redis+sentinel://`` too: each connect
asks the sentinels for the master and refuses a server whose ``ROLE`` is not master, so the
relay's reconnect after a failover reaches the new master (``shared.resp.current_url``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import hiredis
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from shared.resp import (
    ROLE,
    RespProtocol,
    command,
    current_url,
    handshake,
    open_connection,
    sentinel_of,
)
from shared.sentinel import check_role


class _Protocol(RespProtocol):
    def __init__(self) -> None:
        super().__init__()
        self.replies: deque[Any] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def data_received(self, data: bytes) -> None:
        self.replies.extend(self.complete_replies(data))
        if self.replies or self.lost is not None:
            self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost is None:
            self.lost = RedisConnectionError(
                f"pub/sub connection lost: {exc}" if exc else "pub/sub connection closed"
            )
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self) -> None:
        """Until a reply is queued or the connection is gone."""
        if self.replies or self.lost is not None:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None


class Subscriber:
    """One subscribed connection. ``connect`` and ``subscribe`` raise ``RedisError`` or
    ``OSError``; ``replies`` raises ``RedisConnectionError`` once the connection is gone."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._proto = _Protocol()

    async def connect(self, timeout: float) -> None:
        sentinel = sentinel_of(self.url)
        async with asyncio.timeout(timeout):
            url = await current_url(self.url, sentinel, timeout)
            await open_connection(url, self._proto, timeout)
            for cmd in handshake(url, select=False):  # pub/sub ignores the database
                reply = await self._request(cmd)
                if isinstance(reply, hiredis.ReplyError):
                    raise AuthenticationError(str(reply))
            if sentinel is not None:  # a stale address may be a replica by now
                check_role(await self._request(ROLE), "the pub/sub Redis")

    async def subscribe(self, channel: str) -> None:
        reply = await self._request(command("SUBSCRIBE", channel))
        if not (isinstance(reply, list) and reply[:1] == [b"subscribe"]):
            raise ResponseError(f"unexpected answer to SUBSCRIBE: {reply!r}")

    def ping(self) -> None:
        self._send(command("PING"))

    async def replies(self) -> list[Any]:
        """Every reply received since the last call (waiting for at least one)."""
        proto = self._proto
        while not proto.replies and proto.lost is None:
            await proto.wait()
        if proto.replies:
            out = list(proto.replies)
            proto.replies.clear()
            return out
        assert proto.lost is not None
        raise proto.lost

    def close(self) -> None:
        if self._proto.transport is not None:
            self._proto.transport.abort()

    def _send(self, data: bytes) -> None:
        transport = self._proto.transport
        if transport is None or transport.is_closing():
            raise RedisConnectionError("pub/sub connection is closed")
        transport.write(data)

    async def _request(self, data: bytes) -> Any:
        """Send one command and take its reply (only before SUBSCRIBE: nothing else arrives)."""
        self._send(data)
        while not self._proto.replies and self._proto.lost is None:
            await self._proto.wait()
        if self._proto.replies:
            return self._proto.replies.popleft()
        assert self._proto.lost is not None
        raise self._proto.lost
