"""The packet guard: every Engine.IO message is checked before python-socketio sees it.

- every Socket.IO packet a connection sends is checked before it is decoded: binary packets,
  namespaces other than ``/``, a packet before ``CONNECT`` (or a second ``CONNECT``) and packets
  beyond the per-connection rate (``TASKGATE_SOCKET_EVENT_RATE``) close that connection; so does
  a packet python-socketio cannot decode (python-socketio alone would log it and keep the
  connection open);
- a frame that is not an Engine.IO packet closes the websocket (``CheckedWebSocket``).

Frames larger than ``max_http_buffer_size`` never reach this module: python-engineio gives that
size to aiohttp's ``WebSocketResponse(max_msg_size=...)``, which closes the socket with 1009.

This is the one place that reaches into python-socketio's and python-engineio's internals
(``_handle_eio_message``, ``_handle_eio_disconnect``, ``eio._async``, a socket's ``queue``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import socketio
from aiohttp import web
from engineio.async_drivers.aiohttp import WebSocket as EngineIOWebSocket

from gateway.live.fanout import WS_ATTR

log = logging.getLogger("taskgate.sockets")

NAMESPACE = "/"
# Socket.IO packet types (the first character of a text packet).
_CONNECT, _DISCONNECT, _EVENT, _ACK = "0", "1", "2", "3"
_TEXT_TYPES = frozenset({_CONNECT, _DISCONNECT, _EVENT, _ACK})
# Engine.IO packet types: open, close, ping, pong, message, upgrade, noop.
_ENGINEIO_TYPES = frozenset("0123456")


class CheckedWebSocket(EngineIOWebSocket):  # type: ignore[misc]
    """python-engineio's aiohttp websocket, refusing frames that are not Engine.IO packets.

    python-engineio logs an unknown packet type and keeps reading; raising ``OSError`` from
    ``wait`` makes its loop end and close the connection instead.
    """

    async def __call__(self, environ: dict[str, Any]) -> web.WebSocketResponse:
        # As python-engineio's, but without permessage-deflate: updates are small and already
        # compact JSON, and compressing each frame for each client cost a quarter of the relay's
        # CPU and ~100 KiB of zlib state per connection (docs/PERFORMANCE.md).
        self._sock = web.WebSocketResponse(
            max_msg_size=self.server.max_http_buffer_size, compress=False
        )
        await self._sock.prepare(environ["aiohttp.request"])
        self.environ = environ
        # The fan-out writes frames straight to this response when that keeps packet order
        # (gateway/fanout.py); the handler is a bound method of python-engineio's socket.
        socket = getattr(self.handler, "__self__", None)
        if socket is not None:
            setattr(socket, WS_ATTR, self._sock)
        try:
            await self.handler(self)
        finally:
            if socket is not None:
                setattr(socket, WS_ATTR, None)
        return self._sock

    async def wait(self) -> Any:
        data = await super().wait()
        if isinstance(data, str) and (not data or data[0] not in _ENGINEIO_TYPES):
            log.warning("closing websocket: not an Engine.IO packet")
            raise OSError("not an Engine.IO packet")
        return data


class _Bucket:
    """A token bucket for one connection: ``rate`` per second, ``burst`` at most."""

    __slots__ = ("last", "tokens")

    def __init__(self, burst: float) -> None:
        self.tokens = burst
        self.last = time.monotonic()

    def take(self, rate: float, burst: float) -> bool:
        now = time.monotonic()
        self.tokens = min(burst, self.tokens + (now - self.last) * rate)
        self.last = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class SocketGuard:
    """Checks every Engine.IO message before python-socketio sees it; see the module doc."""

    def __init__(self, sio: socketio.AsyncServer, event_rate: float) -> None:
        self.sio = sio
        self.rate = event_rate
        self.burst = max(1.0, 2 * event_rate)
        self._buckets: dict[str, _Bucket] = {}
        self.closed_for: dict[str, int] = {}
        self._dispatch: Callable[[str, Any], Awaitable[None]] = sio._handle_eio_message
        self._eio_disconnect: Callable[..., Awaitable[None]] = sio._handle_eio_disconnect

    def install(self) -> None:
        # A copy: the driver table is a module-level dict shared by every server.
        self.sio.eio._async = {**self.sio.eio._async, "websocket": CheckedWebSocket}
        self.sio.eio.on("message", self.on_message)
        self.sio.eio.on("disconnect", self.on_disconnect)

    def refusal(self, eio_sid: str, data: Any) -> str | None:
        """Why this packet closes its connection, or ``None`` when it may go on."""
        if self.rate > 0:
            bucket = self._buckets.get(eio_sid)
            if bucket is None:
                bucket = self._buckets[eio_sid] = _Bucket(self.burst)
            if not bucket.take(self.rate, self.burst):
                return "too many packets"
        if not isinstance(data, str):
            return "binary packets are not accepted"
        kind = data[:1]
        if kind not in _TEXT_TYPES:
            return "binary or unknown packet type" if kind else "empty packet"
        if data[1:2] == "/":
            end = data.find(",")
            namespace = data[1:end] if end > 0 else data[1:]
            if namespace != NAMESPACE:
                return "unknown namespace"
        connected = self.sio.manager.sid_from_eio_sid(eio_sid, NAMESPACE) is not None
        if kind == _CONNECT and connected:
            return "second CONNECT"
        if kind != _CONNECT and not connected:
            return "packet before CONNECT"
        return None

    async def on_message(self, eio_sid: str, data: Any) -> None:
        if eio_sid not in self.sio.eio.sockets:
            return  # closed by us a moment ago; the frames still in flight are dropped
        reason = self.refusal(eio_sid, data)
        if reason is None:
            try:
                await self._dispatch(eio_sid, data)
                return
            except Exception as exc:  # a packet python-socketio could not decode
                reason = f"malformed packet ({type(exc).__name__})"
        await self.close(eio_sid, reason)

    async def close(self, eio_sid: str, reason: str) -> None:
        log.warning("closing Socket.IO connection %s: %s", eio_sid, reason)
        self.closed_for[reason] = self.closed_for.get(reason, 0) + 1
        self._buckets.pop(eio_sid, None)
        sock = self.sio.eio.sockets.get(eio_sid)
        try:
            await self.sio.eio.disconnect(eio_sid)
        except Exception:
            log.exception("could not close connection %s", eio_sid)
        if sock is not None:
            # python-engineio only sends CLOSE and waits for the client to hang up; a hostile
            # client never does. An empty slot in the send queue ends its writer, which closes
            # the websocket (or ends the long-poll) from our side.
            sock.queue.put_nowait(None)

    async def on_disconnect(self, eio_sid: str, *reason: Any) -> None:
        self._buckets.pop(eio_sid, None)
        await self._eio_disconnect(eio_sid, *reason)
