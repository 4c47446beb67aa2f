"""Sending one event to many sockets cheaply: encode once, frame once, no task per recipient.

python-socketio's ``emit`` to a room encodes the packet once but walks the payload for binary
parts and creates one asyncio task per recipient; then python-engineio puts the packet on the
socket's queue, wakes that socket's writer task, which polls the queue through
``asyncio.wait_for`` (a new task per poll) and finally writes one websocket frame. For the
relay's hot path (one update to the sockets of one user) and for the heartbeat (one event to
every socket) that machinery, not the bytes, was most of the gateway's CPU
(docs/PERFORMANCE.md).

So this module builds the Socket.IO EVENT packet (namespace ``/``, no binary parts, no ack)
from JSON that is already encoded, wraps it once in an Engine.IO MESSAGE and one unmasked
websocket text frame, and writes that frame straight to each socket's transport when it is
safe to, which is when nothing could be sent before it out of order:

- the socket is a connected websocket (``CheckedWebSocket`` records its aiohttp response),
  neither closing nor closed;
- its Engine.IO queue is empty and its writer task is parked in ``queue.get()``, so no
  earlier packet (an ack, a ping, the CONNECT answer) is waiting or half-sent;
- the transport's send buffer is below ``DIRECT_BUFFER_LIMIT`` (a slow reader).

Otherwise the packet goes through python-engineio's queue as before, and keeps its order.

Knowing that takes private attributes: ``asyncio.Queue._getters`` (the writer parked in
``get()``), aiohttp's ``WebSocketResponse._writer`` and its writer's ``_closing`` and
``transport``. ``direct_internals_missing`` checks them when a ``Fanout`` is made (aiohttp is
pinned to the tested minor series); if one is gone it logs an error naming it and every packet
takes the public path, python-engineio's queue: slower, never wrong. A shape that changes under
a running gateway (an ``AttributeError`` in ``write_direct``) does the same.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import struct
from typing import Any

import aiohttp
import orjson
import socketio
from aiohttp import web
from aiohttp.http import WebSocketWriter

log = logging.getLogger("taskgate.fanout")

NAMESPACE = "/"
# Sockets served between two yields to the loop when sending to everyone.
SLICE = 200
# Above this many bytes waiting in a socket's transport, its packets take the queue (which
# waits for the transport to drain) instead of piling more bytes into the buffer.
DIRECT_BUFFER_LIMIT = 64 * 1024
# The attribute CheckedWebSocket sets on python-engineio's socket: its aiohttp response.
WS_ATTR = "_taskgate_ws"

_TEXT_FIN = 0x81


def event_text(event: str, payload_json: str) -> str:
    """The Socket.IO EVENT packet (type 2) for ``[event, payload]`` in namespace ``/``."""
    return f'2["{event}",{payload_json}]'


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked websocket text frame (RFC 6455 5.2) carrying ``payload``."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", _TEXT_FIN, n)
    elif n < 65536:
        header = struct.pack("!BBH", _TEXT_FIN, 126, n)
    else:
        header = struct.pack("!BBQ", _TEXT_FIN, 127, n)
    return header + payload


def direct_internals_missing() -> list[str]:
    """The private attributes ``write_direct`` reads that this Python and aiohttp lack."""
    missing = []
    if not isinstance(getattr(asyncio.Queue(), "_getters", None), collections.deque):
        missing.append("asyncio.Queue()._getters")
    if not hasattr(web.WebSocketResponse(), "_writer"):
        missing.append("aiohttp.web.WebSocketResponse()._writer")
    init_names = getattr(getattr(WebSocketWriter.__init__, "__code__", None), "co_names", ())
    for name in ("_closing", "transport"):
        if name not in init_names:
            missing.append(f"aiohttp.http.WebSocketWriter().{name}")
    return missing


def write_direct(socket: Any, frame: bytes) -> bool:
    """Write ``frame`` to the socket's transport now if that keeps packet order; see the module
    doc. Returns False when the packet must take python-engineio's queue instead."""
    ws = getattr(socket, WS_ATTR, None)
    if ws is None or socket.closing or socket.closed:
        return False
    queue = socket.queue
    # ``_getters`` holds the writer's pending ``get()``: the writer is idle, holding nothing.
    if queue.qsize() or not queue._getters:
        return False
    writer = ws._writer
    if writer is None or ws.closed or writer._closing:
        return False
    transport = writer.transport
    if transport.is_closing() or transport.get_write_buffer_size() > DIRECT_BUFFER_LIMIT:
        return False
    transport.write(frame)
    return True


# One room per user: every socket of a user joins it on connect, and the relay sends their
# updates there.
USER_ROOM = "user:"


def user_room(user: str) -> str:
    return USER_ROOM + user


class Fanout:
    def __init__(self, sio: socketio.AsyncServer, *, direct: bool = True) -> None:
        self.sio = sio
        # How many packets went straight to the transport and how many took the queue.
        self.direct = 0
        self.queued = 0
        missing = direct_internals_missing() if direct else []
        if missing:
            log.error(
                "direct socket writes disabled, every packet takes python-engineio's queue: "
                "missing %s (aiohttp %s is outside the tested range?)",
                ", ".join(missing),
                aiohttp.__version__,
            )
        self.direct_enabled = direct and not missing

    async def _send(self, eio_sid: str, text: str, frame: bytes) -> None:
        socket = self.sio.eio.sockets.get(eio_sid)
        if socket is not None and self.direct_enabled:
            try:
                written = write_direct(socket, frame)
            except AttributeError as exc:
                log.error("direct socket writes disabled: %s", exc)
                self.direct_enabled = False
                written = False
            if written:
                self.direct += 1
                return
        self.queued += 1
        await self.sio.eio.send(eio_sid, text)

    @staticmethod
    def _encode(event: str, payload: Any) -> tuple[str, bytes]:
        text = event_text(event, orjson.dumps(payload).decode())
        # Engine.IO MESSAGE is "4" followed by the Socket.IO packet.
        return text, text_frame(b"4" + text.encode())

    def occupied(self, room: str) -> bool:
        """Whether any socket of this process is in ``room``."""
        return bool(self.sio.manager.rooms.get(NAMESPACE, {}).get(room))

    def members(self, room: str) -> list[str]:
        """The Socket.IO sids of this process in ``room``."""
        return list(self.sio.manager.rooms.get(NAMESPACE, {}).get(room) or ())

    def rooms(self, prefix: str) -> list[str]:
        """The rooms with a socket of this process whose names start with ``prefix``."""
        rooms = self.sio.manager.rooms.get(NAMESPACE, {})
        return [r for r in rooms if isinstance(r, str) and r.startswith(prefix)]

    async def to_room(self, room: str, event: str, payload: Any) -> int:
        """Send to every socket in ``room``; returns how many it was sent or queued for."""
        targets = [eio for _, eio in self.sio.manager.get_participants(NAMESPACE, room)]
        if not targets:
            return 0
        text, frame = self._encode(event, payload)
        for eio_sid in targets:
            await self._send(eio_sid, text, frame)
        return len(targets)

    async def to_all(self, event: str, payload: Any) -> int:
        """Send to every connected socket, yielding to the loop every ``SLICE`` sockets so a
        broadcast to thousands never stalls other work."""
        targets = [eio for _, eio in self.sio.manager.get_participants(NAMESPACE, None)]
        text, frame = self._encode(event, payload)
        for i, eio_sid in enumerate(targets, 1):
            await self._send(eio_sid, text, frame)
            if i % SLICE == 0:
                await asyncio.sleep(0)
        return len(targets)
