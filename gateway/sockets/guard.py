"""The packet guard: every frame a client sends is checked before python-socketio sees it.

- every frame a websocket delivers (Engine.IO ping, pong, noop, upgrade and message packets, and
  websocket ping/pong control frames) takes one token from its connection's bucket
  (``TASKGATE_SOCKET_EVENT_RATE`` per second, burst twice that); a connection whose bucket is
  empty is closed (``CheckedWebSocket.wait``);
- a frame that is not an Engine.IO packet closes the websocket (``CheckedWebSocket``);
- every Socket.IO packet is checked before it is decoded: binary packets, namespaces other than
  ``/``, a packet before ``CONNECT`` (or a second ``CONNECT``) close that connection; so does a
  packet python-socketio cannot decode (python-socketio alone would log it and keep the
  connection open);
- an event named ``connect`` or ``disconnect`` closes the connection: python-socketio would hand
  it to that handler (a client's ``42["disconnect"]`` would stop its token's expiry timer);
- a connection that has not completed a Socket.IO ``CONNECT`` within
  ``TASKGATE_SOCKET_CONNECT_TIMEOUT_S`` of its opening (or of a ``DISCONNECT`` from ``/``) is
  closed: Engine.IO alone keeps any client that answers its pings.

Frames larger than ``max_http_buffer_size`` never reach this module: ``CheckedWebSocket`` gives
that size to aiohttp's ``WebSocketResponse(max_msg_size=...)``, which closes the socket with
1009 (message too big).

This is the one place that reaches into python-socketio's and python-engineio's internals:
``AsyncServer._handle_eio_connect`` / ``_handle_eio_message`` / ``_handle_eio_disconnect`` (the
handlers python-socketio registers on its Engine.IO server, wrapped here), ``eio._async`` (the
driver table, whose ``websocket`` class is replaced), ``eio.sockets``, ``eio.reason``, a
socket's ``queue``, ``sid``, ``connected``/``upgraded``, ``receive`` and ``close``, the driver
websocket's ``handler``/``server``/``_sock``, and that its ``handler`` is a bound method of the
Engine.IO socket. ``CheckedWebSocket._serve`` runs a websocket-opened socket as python-engineio's
``_websocket_handler`` does, with fewer objects per connection; each socket's send queue is a
``SendQueue`` (``eio.create_queue``, gateway/sockets/sendqueue.py). ``check_internals`` verifies
them when this module is imported (so before ``create_app`` builds anything) and again for the
server at ``install``.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import json
import logging
import math
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import socketio
from aiohttp import WSMsgType, web
from engineio.async_drivers.aiohttp import WebSocket as EngineIOWebSocket
from engineio.async_socket import AsyncSocket as EngineIOSocket
from engineio.exceptions import SocketIsClosedError, UnknownPacketError
from engineio.packet import Packet as EngineIOPacket

from gateway.live.fanout import WS_ATTR
from gateway.sockets.sendqueue import SendQueue

log = logging.getLogger("taskgate.sockets")

# The internals named in the module doc were read in the sources of python-socketio 5.12.0 to
# 5.16.3 and python-engineio 4.11.0 to 4.13.3, and this suite passes on python-socketio 5.18.1
# with python-engineio 4.15.1. Outside this range, check them again before widening it.
SUPPORTED = "python-socketio >=5.12,<5.19 with python-engineio >=4.11,<4.16"

NAMESPACE = "/"
# Socket.IO packet types (the first character of a text packet).
_CONNECT, _DISCONNECT, _EVENT, _ACK = "0", "1", "2", "3"
_TEXT_TYPES = frozenset({_CONNECT, _DISCONNECT, _EVENT, _ACK})
# Engine.IO packet types: open, close, ping, pong, message, upgrade, noop.
_ENGINEIO_TYPES = frozenset("0123456")
# Handlers python-socketio would also call for an EVENT packet of that name.
_RESERVED_EVENTS = frozenset({"connect", "disconnect"})
_JSON = json.JSONDecoder()
# How often the websockets' read and write deadlines are checked, and how many between yields.
SWEEP_S = 1.0
SWEEP_SLICE = 1000
# The reasons a connection is closed, as counted in ``SocketGuard.closed_for``.
TOO_MANY = "too many packets"
NO_CONNECT = "no CONNECT in time"


class UnsupportedSocketIO(RuntimeError):
    """python-socketio or python-engineio lacks an internal that the guard relies on."""


def _installed(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def check_internals(sio: socketio.AsyncServer | None = None) -> None:
    """Raise ``UnsupportedSocketIO`` naming every internal the guard uses that is missing.

    Without ``sio`` only the classes are checked (at import); with it, the server's instance
    attributes too (at ``install``).
    """
    missing: list[str] = []
    for owner, names in (
        (socketio.AsyncServer, ("_handle_eio_connect", "_handle_eio_message",
                                "_handle_eio_disconnect")),
        (EngineIOSocket, ("_websocket_handler", "close", "receive")),
        (EngineIOWebSocket, ("wait", "send", "close")),
    ):  # fmt: skip
        for name in names:
            # Coroutines all: python-socketio's base class has synchronous stubs of the same
            # names, which must not pass for the real thing.
            if not inspect.iscoroutinefunction(getattr(owner, name, None)):
                missing.append(f"{owner.__module__}.{owner.__qualname__}.{name}")
    try:
        probe = vars(EngineIOWebSocket(None, None))
    except TypeError:
        probe = {}
    for name in ("handler", "server", "_sock"):
        if name not in probe:
            missing.append(f"engineio.async_drivers.aiohttp.WebSocket(handler, server).{name}")
    if sio is not None:
        eio = sio.eio
        drivers = getattr(eio, "_async", None)
        if not isinstance(drivers, dict) or "websocket" not in drivers:
            missing.append("AsyncServer.eio._async['websocket']")
        if not isinstance(drivers, dict) or not callable(drivers.get("translate_request")):
            missing.append("AsyncServer.eio._async['translate_request']")
        if not isinstance(getattr(eio, "sockets", None), dict):
            missing.append("AsyncServer.eio.sockets")
        if not callable(getattr(eio, "create_queue", None)):
            missing.append("AsyncServer.eio.create_queue")
        else:
            socket = EngineIOSocket(eio, "probe")
            if not callable(getattr(getattr(socket, "queue", None), "put_nowait", None)):
                missing.append("engineio AsyncSocket().queue.put_nowait")
            if getattr(socket, "sid", None) != "probe":
                missing.append("engineio AsyncSocket().sid")
            for flag in ("connected", "upgraded"):
                if getattr(socket, flag, None) is not False:
                    missing.append(f"engineio AsyncSocket().{flag}")
        if not isinstance(getattr(getattr(eio, "reason", None), "TRANSPORT_CLOSE", None), str):
            missing.append("AsyncServer.eio.reason.TRANSPORT_CLOSE")
        for name in ("ping_interval", "ping_timeout", "max_http_buffer_size", "logger"):
            if not hasattr(eio, name):
                missing.append(f"AsyncServer.eio.{name}")
    if missing:
        raise UnsupportedSocketIO(
            "gateway.sockets.guard relies on internals that this python-socketio/"
            f"python-engineio lacks: {', '.join(missing)}. Installed: python-socketio "
            f"{_installed('python-socketio')}, python-engineio {_installed('python-engineio')}; "
            f"supported: {SUPPORTED}."
        )


check_internals()


class CheckedWebSocket(EngineIOWebSocket):  # type: ignore[misc]
    """python-engineio's aiohttp websocket, metering every frame and refusing non-Engine.IO ones.

    python-engineio logs an unknown packet type and keeps reading; raising ``OSError`` from
    ``wait`` makes its loop end and close the connection instead. python-engineio builds one per
    connection as ``driver(handler, server)``; ``SocketGuard.install`` binds the guard.
    """

    def __init__(self, handler: Any, server: Any, guard: SocketGuard) -> None:
        super().__init__(handler, server)
        self.guard = guard
        self.eio_sid: str | None = None
        # Loop times by which the next frame must arrive (``read_by``) and the next packet to
        # send must be queued (``write_by``), while ``_serve`` waits for them; the guard's sweep
        # closes the websocket once one has passed (one sweep for all connections instead of a
        # timer per connection and wait).
        self.read_by = math.inf
        self.write_by = math.inf

    async def __call__(self, environ: dict[str, Any]) -> web.WebSocketResponse:
        # As python-engineio's, but without permessage-deflate: updates are small and already
        # compact JSON, and compressing each frame for each client cost a quarter of the relay's
        # CPU and ~100 KiB of zlib state per connection (docs/PERFORMANCE.md). Without autoping,
        # websocket pings reach ``wait`` and are metered like every other frame.
        self._sock = web.WebSocketResponse(
            max_msg_size=self.server.max_http_buffer_size, compress=False, autoping=False
        )
        await self._sock.prepare(environ["aiohttp.request"])
        self.environ = environ
        # The fan-out writes frames straight to this response when that keeps packet order
        # (gateway/fanout.py); the handler is a bound method of python-engineio's socket.
        socket = getattr(self.handler, "__self__", None)
        if socket is not None:
            setattr(socket, WS_ATTR, self._sock)
            self.eio_sid = socket.sid
            self.guard.metered[socket.sid] = self
        try:
            if socket is not None and not socket.connected:
                await self._serve(socket)
            else:  # an upgrade from long-polling (not offered: transports=["websocket"])
                await self.handler(self)
        finally:
            if socket is not None:
                setattr(socket, WS_ATTR, None)
                self.guard.metered.pop(socket.sid, None)
        return self._sock

    async def _serve(self, socket: EngineIOSocket) -> None:
        """python-engineio's ``AsyncSocket._websocket_handler`` for a socket that opened on the
        websocket, doing the same (the writer drains the socket's queue; every packet read goes
        to ``socket.receive``; a read, and the writer's wait for a packet, last at most ping
        interval + ping timeout, then the websocket is closed; at the end the writer is stopped
        and the socket closed with ``TRANSPORT_CLOSE``) with fewer objects alive per idle
        connection: the read runs in this task instead of a new task and ``wait_for`` per
        packet, the writer waits on the queue without ``wait_for``, and both waits are timed by
        ``read_by``/``write_by`` and the guard's sweep instead of a timer each
        (docs/PERFORMANCE.md, "P5 memory per connection")."""
        server = socket.server
        limit = server.max_http_buffer_size
        timeout = server.ping_interval + server.ping_timeout
        queue = socket.queue
        loop = asyncio.get_running_loop()
        socket.connected = True
        socket.upgraded = True
        writer = asyncio.ensure_future(self._write(queue, timeout))
        self.guard.watch_timeouts()
        while True:
            self.read_by = loop.time() + timeout
            try:
                data = await self.wait()
                if data and len(data) > limit:
                    raise ValueError("packet is too large")
            except BaseException:  # as python-engineio's: a cancel too ends the loop here
                break
            finally:
                self.read_by = math.inf
            if data is None:
                break
            try:
                await socket.receive(EngineIOPacket(encoded_packet=data))
            except UnknownPacketError:
                pass
            except SocketIsClosedError:
                server.logger.info("Receive error -- socket is closed")
                break
            except Exception:
                server.logger.exception("Unknown receive error")
        await queue.put(None)  # unlock the writer so it can end
        await writer
        await socket.close(wait=False, abort=True, reason=server.reason.TRANSPORT_CLOSE)

    async def _write(self, queue: Any, timeout: float) -> None:
        """python-engineio's writer: sends what the queue holds, in order, until ``None`` or a
        failed send (or ``timeout`` with nothing to send: the sweep closes the websocket, the
        read ends and puts ``None``); then closes the websocket."""
        loop = asyncio.get_running_loop()
        while True:
            self.write_by = loop.time() + timeout
            try:
                pkt = await queue.get()
            except asyncio.CancelledError:
                break
            finally:
                self.write_by = math.inf
            queue.task_done()
            if pkt is None:
                break
            packets = [pkt]
            while True:
                try:
                    pkt = queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                queue.task_done()
                if pkt is None:
                    queue.put_nowait(None)
                    break
                packets.append(pkt)
            try:
                for pkt in packets:
                    await self.send(pkt.encode())
            except BaseException:
                break
        await self.close()

    async def wait(self) -> Any:
        while True:
            msg = await self._sock.receive()
            if self.eio_sid is not None and not self.guard.admit(self.eio_sid):
                self.guard.count(self.eio_sid, TOO_MANY)
                raise OSError(TOO_MANY)
            if msg.type is WSMsgType.PING:
                await self._sock.pong(msg.data)
                continue
            if msg.type is WSMsgType.PONG:
                continue
            data = msg.data
            if not isinstance(data, (str, bytes)):
                raise OSError("websocket closed")  # as python-engineio's wait: end the loop
            if isinstance(data, str) and (not data or data[0] not in _ENGINEIO_TYPES):
                log.warning("closing websocket: not an Engine.IO packet")
                raise OSError("not an Engine.IO packet")
            return data


def _event_name(data: str) -> object:
    """The name of a text EVENT packet (``2[/ns,][id][name, ...]``) when it is a JSON string;
    anything else is left to python-socketio's decoder (``None``)."""
    start = data.find(",") + 1 if data[1:2] == "/" else 1
    while start < len(data) and data[start].isdigit():
        start += 1
    if data[start : start + 1] != "[":
        return None
    start += 1
    while data[start : start + 1] in (" ", "\t", "\n", "\r"):
        start += 1
    if data[start : start + 1] != '"':
        return None
    try:
        name, _ = _JSON.raw_decode(data, start)
    except ValueError:
        return None
    return name


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
    """Checks every frame and Socket.IO packet before python-socketio sees it; see the module
    doc. ``connect_timeout_s`` ``0`` and ``event_rate`` ``0`` turn those limits off."""

    def __init__(
        self, sio: socketio.AsyncServer, event_rate: float, connect_timeout_s: float = 5.0
    ) -> None:
        check_internals(sio)
        self.sio = sio
        self.rate = event_rate
        self.burst = max(1.0, 2 * event_rate)
        self.connect_timeout_s = connect_timeout_s
        self._buckets: dict[str, _Bucket] = {}
        # Connections whose every frame is metered by their websocket (``CheckedWebSocket``);
        # the packets of any other transport are metered in ``refusal``.
        self.metered: dict[str, CheckedWebSocket] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._deadlines: dict[str, asyncio.TimerHandle] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self.closed_for: dict[str, int] = {}
        self._eio_connect: Callable[..., Awaitable[Any]] = sio._handle_eio_connect
        self._dispatch: Callable[[str, Any], Awaitable[None]] = sio._handle_eio_message
        self._eio_disconnect: Callable[..., Awaitable[None]] = sio._handle_eio_disconnect

    def install(self) -> None:
        guard = self

        def websocket(handler: Any, server: Any) -> CheckedWebSocket:
            return CheckedWebSocket(handler, server, guard)

        drivers = self.sio.eio._async
        translate = drivers["translate_request"]

        def translate_request(request: Any) -> dict[str, Any]:
            # python-engineio's WSGI environ, with its keys (``HTTP_<HEADER>``, built afresh for
            # every request) interned: one copy of each name for all connections, whose environ
            # lives as long as they do (python-socketio keeps it).
            return {sys.intern(k): v for k, v in translate(request).items()}

        # A copy: the driver table is a module-level dict shared by every server.
        self.sio.eio._async = {
            **drivers,
            "websocket": websocket,
            "translate_request": translate_request,
        }
        # Each socket's send queue (python-engineio's public ``create_queue``): a small one
        # instead of an ``asyncio.Queue`` (gateway/sockets/sendqueue.py).
        self.sio.eio.create_queue = SendQueue
        self.sio.eio.on("connect", self.on_connect)
        self.sio.eio.on("message", self.on_message)
        self.sio.eio.on("disconnect", self.on_disconnect)

    def watch_timeouts(self) -> None:
        """Make sure the sweep of the websockets' ``read_by``/``write_by`` runs."""
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.ensure_future(self._sweep())

    async def _sweep(self) -> None:
        """Every ``SWEEP_S``, close each websocket whose read or writer's wait lasted past its
        deadline (python-engineio's ``wait_for`` timeouts); ends when no websocket is left."""
        loop = asyncio.get_running_loop()
        while self.metered:
            await asyncio.sleep(SWEEP_S)
            now = loop.time()
            for i, ws in enumerate(list(self.metered.values()), 1):
                if ws.read_by < now or ws.write_by < now:
                    ws.read_by = ws.write_by = math.inf
                    task = asyncio.ensure_future(ws.close())
                    self._closing.add(task)
                    task.add_done_callback(self._closing.discard)
                if i % SWEEP_SLICE == 0:
                    await asyncio.sleep(0)

    def admit(self, eio_sid: str) -> bool:
        """Take one frame from this connection's budget; ``False`` once it is spent."""
        if self.rate <= 0:
            return True
        bucket = self._buckets.get(eio_sid)
        if bucket is None:
            bucket = self._buckets[eio_sid] = _Bucket(self.burst)
        return bucket.take(self.rate, self.burst)

    def connected(self, eio_sid: str) -> bool:
        """Whether this Engine.IO connection has completed a Socket.IO CONNECT to ``/``."""
        sid = self.sio.manager.sid_from_eio_sid(eio_sid, NAMESPACE)
        return sid is not None and bool(self.sio.manager.is_connected(sid, NAMESPACE))

    def refusal(self, eio_sid: str, data: Any) -> str | None:
        """Why this packet closes its connection, or ``None`` when it may go on."""
        if eio_sid not in self.metered and not self.admit(eio_sid):
            return TOO_MANY
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
        if kind == _EVENT and _event_name(data) in _RESERVED_EVENTS:
            return "reserved event name"
        connected = self.sio.manager.sid_from_eio_sid(eio_sid, NAMESPACE) is not None
        if kind == _CONNECT and connected:
            return "second CONNECT"
        if kind != _CONNECT and not connected:
            return "packet before CONNECT"
        return None

    async def on_connect(self, eio_sid: str, environ: dict[str, Any], *rest: Any) -> Any:
        result = await self._eio_connect(eio_sid, environ, *rest)
        if result is None or result is True:  # anything else: python-engineio refuses it
            self._arm_deadline(eio_sid)
        return result

    async def on_message(self, eio_sid: str, data: Any) -> None:
        if eio_sid not in self.sio.eio.sockets:
            return  # closed by us a moment ago; the frames still in flight are dropped
        reason = self.refusal(eio_sid, data)
        if reason is None:
            try:
                await self._dispatch(eio_sid, data)
            except Exception as exc:  # a packet python-socketio could not decode
                reason = f"malformed packet ({type(exc).__name__})"
            else:
                kind = data[:1]
                if kind == _CONNECT and self.connected(eio_sid):
                    self._cancel_deadline(eio_sid)
                elif kind == _DISCONNECT:
                    self._arm_deadline(eio_sid)  # out of ``/``: CONNECT again or go
                return
        await self.close(eio_sid, reason)

    def _arm_deadline(self, eio_sid: str) -> None:
        self._cancel_deadline(eio_sid)
        if self.connect_timeout_s > 0:
            loop = asyncio.get_running_loop()
            self._deadlines[eio_sid] = loop.call_later(
                self.connect_timeout_s, self._deadline_passed, eio_sid
            )

    def _cancel_deadline(self, eio_sid: str) -> None:
        timer = self._deadlines.pop(eio_sid, None)
        if timer is not None:
            timer.cancel()

    def _deadline_passed(self, eio_sid: str) -> None:
        self._deadlines.pop(eio_sid, None)
        if eio_sid not in self.sio.eio.sockets or self.connected(eio_sid):
            return
        task = asyncio.ensure_future(self.close(eio_sid, NO_CONNECT))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def count(self, eio_sid: str, reason: str) -> None:
        """Log and count a connection closed for ``reason``."""
        log.warning("closing Socket.IO connection %s: %s", eio_sid, reason)
        self.closed_for[reason] = self.closed_for.get(reason, 0) + 1

    async def close(self, eio_sid: str, reason: str) -> None:
        self.count(eio_sid, reason)
        self._buckets.pop(eio_sid, None)
        self._cancel_deadline(eio_sid)
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
        self._cancel_deadline(eio_sid)
        await self._eio_disconnect(eio_sid, *reason)
