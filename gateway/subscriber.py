"""A Redis pub/sub subscriber on a bare asyncio protocol, for the relay's hot path.

redis-py's ``PubSub.get_message`` costs tens of microseconds of Python per message (a health
check, the retry wrapper, a timeout context, a response callback, a dict per message) and one
wake-up of the reading task per message. Here the protocol feeds what the socket delivered to
hiredis's reader and queues every complete reply at once; the relay wakes once per read and
takes them all. Only what a subscriber needs is spoken: AUTH, SUBSCRIBE, PING.

URLs: ``redis://``, ``rediss://`` (TLS) and ``unix://``, with user and password as redis-py
reads them (``redis.asyncio.connection.parse_url``).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any, cast

import hiredis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError


def _command(*args: bytes | str) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg.encode() if isinstance(arg, str) else arg
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.replies: deque[Any] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self.lost = RedisConnectionError(f"protocol error from Redis: {exc}")
                if self.transport is not None:
                    self.transport.abort()
                break
            if reply is False:
                break
            self.replies.append(reply)
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
        opts = parse_url(self.url)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            if opts.get("connection_class") is UnixDomainSocketConnection:
                await loop.create_unix_connection(lambda: self._proto, opts["path"])
            else:
                context: ssl.SSLContext | None = None
                if opts.get("connection_class") is SSLConnection:
                    context = ssl.create_default_context()
                    if opts.get("ssl_cert_reqs") in ("none", ssl.CERT_NONE):
                        context.check_hostname = False
                        context.verify_mode = ssl.CERT_NONE
                await loop.create_connection(
                    lambda: self._proto,
                    opts.get("host", "localhost"),
                    int(opts.get("port", 6379)),
                    ssl=context,
                )
            password = opts.get("password")
            if password:
                user = opts.get("username")
                args = ("AUTH", user, password) if user else ("AUTH", password)
                reply = await self._request(_command(*args))
                if isinstance(reply, hiredis.ReplyError):
                    raise AuthenticationError(str(reply))

    async def subscribe(self, channel: str) -> None:
        reply = await self._request(_command("SUBSCRIBE", channel))
        if not (isinstance(reply, list) and reply[:1] == [b"subscribe"]):
            raise ResponseError(f"unexpected answer to SUBSCRIBE: {reply!r}")

    def ping(self) -> None:
        self._send(_command("PING"))

    async def replies(self) -> list[Any]:
        """Every reply received since the last call (waiting for at least one)."""
        proto = self._proto
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
        await self._proto.wait()
        if self._proto.replies:
            return self._proto.replies.popleft()
        assert self._proto.lost is not None
        raise self._proto.lost
