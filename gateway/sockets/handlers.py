"""Socket.IO events: auth on connect, one room per user, ``submit``/``cancel``/``watch`` with acks.

Any other event sent with an ack id is answered ``{"error": {"code": "unknown_event"}}``
(python-socketio alone would drop it and leave the caller waiting).

A connection is closed once its token expires (``exp`` plus the verifier's leeway). The packet
guard in front of python-socketio is ``gateway.sockets.guard``.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import socketio
from redis.exceptions import RedisError

from gateway.auth import LEEWAY_S, TokenRules, verify_token
from gateway.live.fanout import user_room
from gateway.live.ledger import TaskEvents
from gateway.sockets.guard import NAMESPACE, SocketGuard
from gateway.tasks.service import TaskService
from shared.errors import AuthError, StoreUnavailable, TaskgateError
from shared.schema import Snapshot
from shared.settings import Secret
from shared.store_errors import store_unavailable

log = logging.getLogger("taskgate.sockets")

# The events a client may send (the contract's Socket.IO section).
EVENTS = ("submit", "cancel", "watch")


def _error(
    exc: Exception,
    on_bug: Callable[[], None] | None = None,
    on_store: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """The ack for a failed event: the error's own, the store's 503, or (a bug) internal."""
    if isinstance(exc, (StoreUnavailable, RedisError)) and on_store is not None:
        on_store()
    if isinstance(exc, TaskgateError):
        return exc.to_dict()
    if isinstance(exc, RedisError):
        return store_unavailable(exc).to_dict()
    log.exception("socket event failed")
    if on_bug is not None:
        on_bug()
    return {"error": {"code": "internal", "message": "internal error"}}


class ExpiryTimers:
    """When each connection's token expires, with one loop timer for the earliest instead of one
    per connection (a ``TimerHandle`` each: ~0.5 KiB per connection, docs/PERFORMANCE.md).

    ``add(sid, at)`` (``at`` a ``time.time()``), ``discard(sid)``; ``on_expire(sid)`` is called
    once ``at`` has passed for a connection still there. A discarded entry stays in the heap
    until it comes up, or until the heap holds more than twice the live entries (rebuilt)."""

    def __init__(self, on_expire: Callable[[str], None]) -> None:
        self.on_expire = on_expire
        self._heap: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = math.inf

    def __len__(self) -> int:
        return len(self._due)

    def add(self, sid: str, at: float) -> None:
        self._due[sid] = at
        heapq.heappush(self._heap, (at, sid))
        if at < self._armed_at:
            self._arm(at)

    def discard(self, sid: str) -> None:
        if self._due.pop(sid, None) is None:
            return
        if len(self._heap) > 64 and len(self._heap) > 2 * len(self._due):
            self._heap = [(at, s) for s, at in self._due.items()]
            heapq.heapify(self._heap)

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_at = at
        delay = max(0.0, at - time.time())
        self._timer = asyncio.get_running_loop().call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer, self._armed_at = None, math.inf
        now = time.time()
        heap = self._heap
        while heap and heap[0][0] <= now:
            at, sid = heapq.heappop(heap)
            if self._due.get(sid) == at:
                del self._due[sid]
                self.on_expire(sid)
        if heap:
            self._arm(heap[0][0])

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._armed_at = math.inf


def register_socket_handlers(
    sio: socketio.AsyncServer,
    service: TaskService,
    secret: Secret,
    events: TaskEvents,
    on_bug: Callable[[], None] | None = None,
    *,
    on_event: Callable[[str], None] | None = None,
    on_connect: Callable[[str], None] | None = None,
    on_store: Callable[[], None] | None = None,
) -> SocketGuard:
    """The events, on ``sio``; ``on_bug`` is called for each unhandled error, ``on_event`` with
    each event's name and ``on_connect`` with each connect's outcome (metrics)."""
    count_event = on_event or (lambda _: None)
    count_connect = on_connect or (lambda _: None)
    rules = TokenRules.from_settings(service.settings)
    guard = SocketGuard(
        sio, service.settings.socket_event_rate, service.settings.socket_connect_timeout_s
    )
    guard.install()
    # sid -> (user, the point it joined its room: TaskEvents.joined). The user is kept here,
    # not in a python-socketio session (one dict less per connection).
    joined: dict[str, tuple[str, int]] = {}
    closing: set[asyncio.Task[None]] = set()

    async def user_of(sid: str) -> str:
        return joined[sid][0]

    async def send_snapshots(sid: str, snaps: list[Snapshot], *, asked: bool = False) -> int:
        """Catch-up: what the socket lacks of ``snaps`` (read after it joined its room), or
        all of them when it ``asked``."""
        entry = joined.get(sid)
        if entry is None:  # gone meanwhile
            return 0
        user, at = entry
        return await events.catch_up(sid, user, at, snaps, asked=asked)

    def expire(sid: str) -> None:
        eio_sid = sio.manager.eio_sid_from_sid(sid, NAMESPACE)
        if eio_sid is None:
            return
        task = asyncio.ensure_future(guard.close(eio_sid, "token expired"))
        closing.add(task)
        task.add_done_callback(closing.discard)

    expiries = ExpiryTimers(expire)

    @sio.event  # type: ignore[untyped-decorator]
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        token = auth.get("token") if isinstance(auth, dict) else None
        try:
            identity = verify_token(secret, token, rules)
        except AuthError as exc:
            count_connect("refused")
            raise socketio.exceptions.ConnectionRefusedError(exc.message) from None
        count_connect("accepted")
        await sio.enter_room(sid, user_room(identity.user))
        joined[sid] = (identity.user, events.joined())
        expiries.add(sid, identity.expires_at + LEEWAY_S)
        # Sent after the handshake completes, so the client has its handlers in place.
        sio.start_background_task(_send_live, sid, identity.user)

    @sio.event  # type: ignore[untyped-decorator]
    async def disconnect(sid: str, *_: Any) -> None:
        expiries.discard(sid)
        entry = joined.pop(sid, None)
        if entry is not None:
            events.forget(entry[0], sid)

    async def _send_live(sid: str, user: str) -> None:
        try:
            await send_snapshots(sid, await service.live(user))
        except Exception:
            log.exception("could not send connect-time snapshots to %s", user)

    @sio.event  # type: ignore[untyped-decorator]
    async def submit(sid: str, data: Any = None, *_: Any) -> dict[str, Any]:
        count_event("submit")
        try:
            return await service.submit_any(await user_of(sid), data)
        except Exception as exc:
            return _error(exc, on_bug, on_store)

    @sio.event  # type: ignore[untyped-decorator]
    async def cancel(sid: str, data: Any = None, *_: Any) -> dict[str, Any]:
        count_event("cancel")
        try:
            task_id = data.get("task_id") if isinstance(data, dict) else ""
            await service.cancel(await user_of(sid), task_id)
        except Exception as exc:
            return _error(exc, on_bug, on_store)
        return {"ok": True}

    @sio.event  # type: ignore[untyped-decorator]
    async def watch(sid: str, data: Any = None, *_: Any) -> dict[str, Any]:
        count_event("watch")
        try:
            wanted = data.get("tasks") if isinstance(data, dict) else None
            snaps = await service.watch(await user_of(sid), wanted)
        except Exception as exc:
            return _error(exc, on_bug, on_store)
        sent = await send_snapshots(sid, snaps, asked=True)
        return {"ok": True, "sent": sent}

    @sio.on("*")  # type: ignore[untyped-decorator]
    async def unknown_event(event: Any, sid: str, *_: Any) -> dict[str, Any]:
        # Sent as the ack when the packet has an ack id, dropped by python-socketio otherwise.
        count_event("unknown")
        shown = event[:64] if isinstance(event, str) else type(event).__name__
        return {
            "error": {
                "code": "unknown_event",
                "message": f"unknown event {shown!r}",
                "details": {"events": list(EVENTS)},
            }
        }

    return guard
