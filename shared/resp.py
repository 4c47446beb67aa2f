"""A pipelined Redis connection on a bare asyncio protocol, for the accept path.

Through redis-py, one script run per group of submits cost ~300 µs of the gateway's CPU beyond
the work it carried: the pool's lock and connection events, a task per write (the write
timeout), the read machinery. Here a command is packed by hand (``pack_args``), written to the
socket at once, and its reply is a future that the protocol resolves from hiredis's reader.
Redis answers one connection's commands in the order it received them, so every caller can
share the connection: the replies are matched to the futures first in, first out.

A reply that is not awaited in time aborts the connection (as redis-py does): its commands and
those of everyone waiting behind them fail with a connection error, and the next command
connects again. Whether a command that timed out ran is unknown to the caller, as with any
client.

URLs: ``redis://``, ``rediss://`` (TLS) and ``unix://``, with user, password and database as
redis-py reads them (``redis.asyncio.connection.parse_url``); and ``redis+sentinel://``
(``shared.sentinel``): each connect then asks the sentinels for the master (``current_url``)
and checks with ``ROLE`` that it reached one. Sending on a connection is the same either way.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, cast

import hiredis
import redis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeout

from shared.sentinel import (
    SentinelURL,
    check_role,
    is_sentinel_url,
    master_address,
    parse_sentinel_url,
)

log = logging.getLogger("taskgate.resp")
Arg = str | bytes | int
# Connect and reply timeout when none is given (the gateway's store timeout).
DEFAULT_TIMEOUT_S = 3.0


def pack_args(args: Sequence[Arg]) -> bytes:
    """``args`` as RESP bulk strings, without the array header: ``$<len>\\r\\n<arg>\\r\\n``
    each. Several times faster than redis-py's ``pack_command`` for the thousands of small
    arguments of one accept run, whose packing was a third of its Python time."""
    parts: list[bytes] = []
    put = parts.append
    for arg in args:
        if type(arg) is not bytes:
            if isinstance(arg, bool) or not isinstance(arg, (str, int)):
                raise TypeError(f"cannot send {type(arg).__name__} to Redis")
            arg = str(arg).encode()
        put(b"$%d" % len(arg))
        put(arg)
    if not parts:
        return b""
    parts.append(b"")
    return b"\r\n".join(parts)


def command(*args: Arg) -> bytes:
    """One whole command, array header included."""
    return b"*%d\r\n" % len(args) + pack_args(args)


def _redis_error_parser() -> Any:
    """redis-py's own mapping of an error reply to its exception class
    (``redis._parsers.base.BaseParser.parse_error``: private, pinned with redis <8.2), or None
    when that moved: then ``reply_error`` maps the errors the accept path acts on itself."""
    try:
        from redis._parsers.base import BaseParser

        parse = BaseParser.parse_error
    except (ImportError, AttributeError):
        log.error("redis-py's error parser moved (redis %s): using taskgate's own mapping",
                  redis.__version__)  # fmt: skip
        return None
    return parse


_PARSE_ERROR = _redis_error_parser()
# The public classes of the replies the gateway acts on, by their first word.
_PUBLIC_ERRORS: dict[str, type[RedisError]] = {
    "NOSCRIPT": NoScriptError,
    "LOADING": BusyLoadingError,
    "READONLY": ReadOnlyError,
    "OOM": OutOfMemoryError,
}


def reply_error(reply: hiredis.ReplyError) -> RedisError:
    """An error reply as the exception redis-py raises for it (``NoScriptError``, ...)."""
    text = str(reply)
    if _PARSE_ERROR is not None:
        exc = _PARSE_ERROR(text)
        if isinstance(exc, RedisError):
            return exc
    word, _, rest = text.partition(" ")
    cls = _PUBLIC_ERRORS.get(word)
    return cls(rest) if cls is not None else ResponseError(text)


_CERT_REQS = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}


def tls_context(opts: Mapping[str, Any]) -> ssl.SSLContext:
    """The TLS context for a ``rediss://`` URL's options, as redis-py reads them: the CA to
    trust (``ssl_ca_certs``, a file, or ``ssl_ca_path``, a directory; else the system's), the
    client certificate and key (``ssl_certfile``, ``ssl_keyfile``, ``ssl_password``), the
    server's certificate check (``ssl_cert_reqs``: none, optional, required) and its host name
    check (``ssl_check_hostname``, on unless the certificate is not checked)."""
    reqs = opts.get("ssl_cert_reqs", "required")
    if isinstance(reqs, str):
        if reqs.lower() not in _CERT_REQS:
            raise ValueError(f"ssl_cert_reqs: {reqs!r} is not none, optional or required")
        reqs = _CERT_REQS[reqs.lower()]
    context = ssl.create_default_context(
        cafile=opts.get("ssl_ca_certs"), capath=opts.get("ssl_ca_path")
    )
    if opts.get("ssl_certfile"):
        context.load_cert_chain(
            opts["ssl_certfile"], opts.get("ssl_keyfile"), opts.get("ssl_password")
        )
    check_hostname = opts.get("ssl_check_hostname", True)
    if reqs == ssl.CERT_NONE or check_hostname in (False, "false", "False", "0"):
        context.check_hostname = False
    context.verify_mode = ssl.VerifyMode(reqs)
    return context


async def open_connection(url: str, protocol: asyncio.Protocol, timeout: float) -> None:
    """Connect ``protocol`` to the server of ``url`` (TCP, TLS or unix socket); the caller
    then sends the ``handshake`` commands and reads their replies."""
    opts = parse_url(url)
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        if opts.get("connection_class") is UnixDomainSocketConnection:
            await loop.create_unix_connection(lambda: protocol, opts["path"])
        else:
            context: ssl.SSLContext | None = None
            if opts.get("connection_class") is SSLConnection:
                context = tls_context(opts)
            await loop.create_connection(
                lambda: protocol,
                opts.get("host", "localhost"),
                int(opts.get("port", 6379)),
                ssl=context,
            )


# ---- Sentinel: where to connect, and whether it is the master (only on connect) ----------


def sentinel_of(url: str) -> SentinelURL | None:
    """The parsed sentinel URL, or None for a plain one."""
    return parse_sentinel_url(url) if is_sentinel_url(url) else None


async def current_url(url: str, sentinel: SentinelURL | None, timeout: float) -> str:
    """``url`` itself, or the ``redis://`` URL of the master the sentinels name now."""
    if sentinel is None:
        return url
    host, port = await master_address(sentinel, timeout)
    return sentinel.master_url(host, port)


ROLE = b"*1\r\n$4\r\nROLE\r\n"


# ---- end of Sentinel --------------------------------------------------------------------


def handshake(url: str, *, select: bool = True) -> list[bytes]:
    """The commands a new connection to ``url`` sends first: AUTH if the URL has a password,
    SELECT if it names a database other than 0 (and ``select``)."""
    opts = parse_url(url)
    out = []
    password = opts.get("password")
    if password:
        user = opts.get("username")
        out.append(command("AUTH", user, password) if user else command("AUTH", password))
    if select and int(opts.get("db", 0) or 0):
        out.append(command("SELECT", int(opts["db"])))
    return out


class RespProtocol(asyncio.Protocol):
    """An asyncio connection whose bytes hiredis parses into replies: the half that the
    pipeline's protocol and the subscriber's (``gateway.live.subscriber``) share."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def complete_replies(self, data: bytes) -> list[Any]:
        """Feed ``data``; the replies it completes (the rest of a large one may still come).
        Bytes that are not RESP end the connection: ``lost`` is set and the transport aborted,
        after the replies before them."""
        self.reader.feed(data)
        replies: list[Any] = []
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                if self.lost is None:
                    self.lost = RedisConnectionError(f"protocol error from Redis: {exc}")
                if self.transport is not None:
                    self.transport.abort()
                return replies
            if reply is False:
                return replies
            replies.append(reply)


class _Replies(RespProtocol):
    """Each complete reply resolves the oldest future still waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting: deque[asyncio.Future[Any]] = deque()

    def data_received(self, data: bytes) -> None:
        for reply in self.complete_replies(data):
            if not self.waiting:
                self.abort(RedisConnectionError("a reply nobody asked for"))
                return
            fut = self.waiting.popleft()
            if fut.done():  # its caller gave up (timeout, cancellation): the reply is dropped
                continue
            if isinstance(reply, hiredis.ReplyError):
                fut.set_exception(reply_error(reply))
            else:
                fut.set_result(reply)
        if self.lost is not None:  # not RESP: the rest fail too
            self._fail(self.lost)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"connection lost: {exc}" if exc else "connection closed"))

    def abort(self, why: Exception) -> None:
        self._fail(why)
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, why: Exception) -> None:
        if self.lost is None:
            self.lost = why
        while self.waiting:
            fut = self.waiting.popleft()
            if not fut.done():
                fut.set_exception(self.lost)


class Pipeline:
    """One shared, pipelined connection. ``send`` writes a command and returns the future of
    its reply; ``reply`` awaits it within the timeout. Errors are redis-py's: error replies
    as ``ResponseError`` (and its subclasses), a lost connection as ``ConnectionError``, a
    reply not in time as ``TimeoutError``."""

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.url = url
        self.timeout = timeout
        self._sentinel = sentinel_of(url)
        self._proto: _Replies | None = None
        self._connecting: asyncio.Lock | None = None

    async def send(self, packed: Sequence[bytes]) -> asyncio.Future[Any]:
        proto = self._proto
        if proto is None or proto.lost is not None:
            proto = await self._connect()
        return self._write(proto, packed)

    async def reply(self, fut: asyncio.Future[Any]) -> Any:
        try:
            async with asyncio.timeout(self.timeout):
                return await fut
        except TimeoutError:
            proto = self._proto
            if proto is not None and fut in proto.waiting:
                proto.abort(RedisTimeout(f"no reply from Redis within {self.timeout:g}s"))
            raise RedisTimeout(f"no reply from Redis within {self.timeout:g}s") from None

    async def execute(self, *args: Arg) -> Any:
        """One command, sent and answered."""
        return await self.reply(await self.send([command(*args)]))

    def close(self) -> None:
        proto, self._proto = self._proto, None
        if proto is not None:
            proto.abort(RedisConnectionError("connection closed"))

    @staticmethod
    def _write(proto: _Replies, packed: Sequence[bytes]) -> asyncio.Future[Any]:
        transport = proto.transport
        if proto.lost is not None or transport is None or transport.is_closing():
            raise proto.lost or RedisConnectionError("connection closed")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        transport.writelines(packed)
        proto.waiting.append(fut)
        return fut

    async def _connect(self) -> _Replies:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._proto is not None and self._proto.lost is None:
                return self._proto  # another caller connected meanwhile
            proto = _Replies()
            try:
                url = await current_url(self.url, self._sentinel, self.timeout)
                await open_connection(url, proto, self.timeout)
                hello = [self._write(proto, [cmd]) for cmd in handshake(url)]
                for fut in hello:
                    try:
                        await self.reply(fut)
                    except ResponseError as exc:
                        raise AuthenticationError(str(exc)) from None
                if self._sentinel is not None:  # a stale address may be a replica by now
                    check_role(await self.reply(self._write(proto, [ROLE])), "Redis")
            except TimeoutError:
                proto.abort(RedisConnectionError("connect timed out"))
                raise RedisTimeout(f"could not connect to Redis within {self.timeout:g}s") from None
            except OSError as exc:
                raise RedisConnectionError(f"could not connect to Redis: {exc}") from exc
            except BaseException:
                proto.abort(RedisConnectionError("connect failed"))
                raise
            self._proto = proto
            return proto
