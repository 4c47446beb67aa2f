"""Sending one event to many sockets cheaply: encode once, no task per recipient.

python-socketio's ``emit`` to a room encodes the packet once but walks the payload for binary
parts and creates one asyncio task per recipient. For the relay's hot path (one update to the
sockets of one user) and for the heartbeat (one event to every socket) that overhead dominates,
so this module builds the Socket.IO EVENT packet text itself (namespace ``/``, no binary parts,
no ack) from JSON that is already encoded, and hands it to each socket's Engine.IO queue.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import socketio

NAMESPACE = "/"
# Sockets served between two yields to the loop when sending to everyone.
SLICE = 200


def event_text(event: str, payload_json: str) -> str:
    """The Socket.IO EVENT packet (type 2) for ``[event, payload]`` in namespace ``/``."""
    return f'2["{event}",{payload_json}]'


class Fanout:
    def __init__(self, sio: socketio.AsyncServer) -> None:
        self.sio = sio

    async def to_room(self, room: str, event: str, payload: Any) -> int:
        """Send to every socket in ``room``; returns how many it was queued for."""
        targets = [eio for _, eio in self.sio.manager.get_participants(NAMESPACE, room)]
        if not targets:
            return 0
        text = event_text(event, orjson.dumps(payload).decode())
        for eio_sid in targets:
            await self.sio.eio.send(eio_sid, text)
        return len(targets)

    async def to_all(self, event: str, payload: Any) -> int:
        """Send to every connected socket, yielding to the loop every ``SLICE`` sockets so a
        broadcast to thousands never stalls other work."""
        targets = [eio for _, eio in self.sio.manager.get_participants(NAMESPACE, None)]
        text = event_text(event, orjson.dumps(payload).decode())
        for i, eio_sid in enumerate(targets, 1):
            await self.sio.eio.send(eio_sid, text)
            if i % SLICE == 0:
                await asyncio.sleep(0)
        return len(targets)
