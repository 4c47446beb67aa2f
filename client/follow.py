"""Following one task: its snapshots in ``seq`` order, over Socket.IO, repaired by HTTP.

The socket joins the user's room (every ``task`` event of the user's tasks reaches it) and on
each reconnect sends ``watch`` with the last ``seq`` applied, so whatever changed while it was
away comes back as the current snapshot; a record read while the socket is down cuts the
reconnect's backoff short (the gateway answers again, and polls skip updates). Until the first
connect has been tried, nothing is read over HTTP, so that when the socket works every snapshot
comes from it, in order. When the socket cannot connect, or stays quiet for ``quiet`` seconds,
the task's HTTP record (the truth) is read instead. Whatever the source, a snapshot is yielded
only when its ``seq`` is above the last one yielded, so none comes twice or out of order, and
following ends after the terminal one.

Submitting through the follower's own socket (``submit``) subscribes before the task is
published, as the contract promises, so even the first update (``seq`` 1) is seen. What no
gateway was up to deliver (a restart) cannot be replayed: the store keeps each task's latest
snapshot, not its history, so after such a gap the next snapshot yielded is the current one.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import Any

import socketio

from client.errors import ConnectionLost, TaskgateError, Unavailable, error_from
from client.retry import RetryPolicy

Snapshot = dict[str, Any]
TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})
# Seconds without a ``task`` event after which the record is read over HTTP.
QUIET_S = 10.0
# Seconds between reads of the record while the socket is not connected.
POLL_S = 1.0
# Reconnect backoff of the socket: from RECONNECT_MIN_S doubling to RECONNECT_MAX_S, jittered.
RECONNECT_MIN_S = 0.2
RECONNECT_MAX_S = 5.0
ACK_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 10.0


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


# Queued when the socket (re)connected (time to send ``watch``), and when a connect failed.
CONNECTED = _Marker("CONNECTED")
CONNECT_FAILED = _Marker("CONNECT_FAILED")
GetRecord = Callable[[str], Awaitable[Snapshot]]
Submit = Callable[[Mapping[str, Any]], Awaitable[Snapshot]]


class Follower:
    """The socket and the record of one task, read by ``snapshots`` (a known task) or
    ``submit`` (a task it submits)."""

    def __init__(
        self,
        url: str,
        token: str,
        get_record: GetRecord,
        *,
        since: int = 0,
        quiet: float = QUIET_S,
        poll: float = POLL_S,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.url = url
        self.token = token
        self.get_record = get_record
        self.task_id: str | None = None
        self.last = since
        self.quiet = quiet
        self.poll = poll
        self.retry = retry
        self.queue: asyncio.Queue[Snapshot | _Marker] = asyncio.Queue()
        # ``task`` events that came before the submit's ack named the task.
        self.early: list[Snapshot] = []
        # handle_sigint=False: python-engineio would take SIGINT over and cancel every task of
        # the loop; Ctrl-C belongs to the application.
        self.sio = socketio.AsyncClient(
            reconnection=False, logger=False, engineio_logger=False, handle_sigint=False
        )
        self.sio.on("connect", self._on_connect)
        self.sio.on("disconnect", self._on_disconnect)
        self.sio.on("task", self._on_task)
        self._down = asyncio.Event()
        self._down.set()
        # Set when the record was read while the socket was down: the gateway answers again,
        # so the keeper's backoff pause ends and it connects now (polls skip updates). Not
        # after such a connect failed too (HTTP answers, the socket does not: a proxy passing
        # only /api/, a gateway draining), until a connect succeeds or a read fails.
        self._answering = asyncio.Event()
        self._wake = True
        self._keeper: asyncio.Future[None] | None = None

    # -- Socket.IO ---------------------------------------------------------------------------

    def _on_connect(self) -> None:
        self._down.clear()
        self.queue.put_nowait(CONNECTED)

    def _on_disconnect(self, *_: Any) -> None:
        self._down.set()

    def _on_task(self, data: Any) -> None:
        if not isinstance(data, dict):
            return
        if self.task_id is None:
            self.early.append(data)
        elif data.get("task_id") == self.task_id:
            self.queue.put_nowait(data)

    async def _keep_connected(self) -> None:
        """Connect, and connect again whenever the connection drops, with capped backoff."""
        delay = RECONNECT_MIN_S
        woken = False  # this try came of a record read
        while True:
            await self._down.wait()
            try:
                await self.sio.connect(
                    self.url,
                    auth={"token": self.token},
                    transports=["websocket"],
                    wait_timeout=CONNECT_TIMEOUT_S,
                )
            except (socketio.exceptions.SocketIOError, OSError):
                self.queue.put_nowait(CONNECT_FAILED)
                if woken:
                    self._wake = False
                self._answering.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._answering.wait(), delay * random.uniform(0.5, 1.0))
                woken = self._answering.is_set()
                delay = min(RECONNECT_MAX_S, delay * 2)
                continue
            delay, woken, self._wake = RECONNECT_MIN_S, False, True
            # Then wait for the drop (the disconnect handler sets ``_down``) to connect again.
            if self.sio.connected:
                self._down.clear()
            else:
                self._down.set()

    async def _call(self, event: str, data: Any) -> Any:
        """An event's ack; ``None`` when the socket dropped or no ack came."""
        try:
            return await self.sio.call(event, data, timeout=ACK_TIMEOUT_S)
        except socketio.exceptions.SocketIOError:
            return None

    async def _watch(self) -> None:
        """Ask for what this socket lacks: the current snapshot if its seq is above ours."""
        ack = await self._call("watch", {"tasks": {self.task_id: self.last}})
        if isinstance(ack, dict) and "error" in ack:
            error = error_from(ack)
            if not isinstance(error, Unavailable):
                raise error

    async def _first_connect(self) -> bool:
        """Start the keeper and wait for its first try: whether the socket is connected."""
        self._keeper = asyncio.ensure_future(self._keep_connected())
        while True:
            marker = await self.queue.get()
            if marker is CONNECTED:
                return True
            if marker is CONNECT_FAILED:
                return False

    # -- HTTP --------------------------------------------------------------------------------

    async def _record(self) -> Snapshot | None:
        assert self.task_id is not None
        try:
            return await self.get_record(self.task_id)
        except (Unavailable, ConnectionLost):
            return None  # the gateway is down or restarting: try again later

    # -- The stream --------------------------------------------------------------------------

    def _fresh(self, snap: Mapping[str, Any]) -> bool:
        seq = snap.get("seq")
        if isinstance(seq, bool) or not isinstance(seq, int) or seq <= self.last:
            return False
        self.last = seq
        return True

    async def snapshots(self, task_id: str) -> AsyncGenerator[Snapshot, None]:
        """Every snapshot of ``task_id`` above ``since`` in seq order, the terminal one last."""
        first = await self.get_record(task_id)  # NotFound, Unauthorized: raised here
        self.task_id = task_id
        if first.get("status") in TERMINAL:
            if self._fresh(first):
                yield first
            return
        try:
            if await self._first_connect():
                await self._watch()
            async for snap in self._stream():
                yield snap
        finally:
            await self._close()

    async def submit(
        self, body: Mapping[str, Any], http_submit: Submit
    ) -> AsyncGenerator[Snapshot, None]:
        """Submit ``body`` over the socket (subscribed before the task is published) and yield
        every snapshot of the task from ``seq`` 1; over HTTP when the socket cannot connect."""
        try:
            if await self._first_connect():
                self.task_id = await self._socket_submit(body)
                for snap in self.early:
                    if snap.get("task_id") == self.task_id:
                        self.queue.put_nowait(snap)
                self.early.clear()
            else:
                snap = await http_submit(body)
                self.task_id = str(snap["task_id"])
                self.early.clear()
                self.queue.put_nowait(snap)
            async for snap in self._stream():
                yield snap
        finally:
            await self._close()

    async def _socket_submit(self, body: Mapping[str, Any]) -> str:
        attempt = 0
        while True:
            ack = await self._call("submit", dict(body))
            if ack is None:
                # No answer: whether it was accepted is unknown, so it is not sent again.
                raise ConnectionLost("submit: no answer from the gateway over Socket.IO")
            if isinstance(ack, dict) and isinstance(ack.get("task_id"), str):
                task_id: str = ack["task_id"]
                return task_id
            error = error_from(ack)
            if self.retry is None or not self.retry.retries(error, attempt):
                raise error
            await asyncio.sleep(self.retry.delay(attempt, _retry_after(error)))
            attempt += 1

    async def _stream(self) -> AsyncGenerator[Snapshot, None]:
        while True:
            wait = self.quiet if self.sio.connected else self.poll
            try:
                item = await asyncio.wait_for(self.queue.get(), wait)
            except TimeoutError:
                item = CONNECT_FAILED  # quiet, or still disconnected: read the record
            if self._keeper is not None and self._keeper.done():
                self._keeper.result()  # a bug in the keeper: raise it
            if item is CONNECTED:
                await self._watch()
                continue
            if isinstance(item, _Marker):
                record = await self._record()
                if record is None:
                    self._wake = True  # the gateway is away: its next answer is news
                    continue
                if not self.sio.connected and self._wake:
                    self._answering.set()  # the gateway is back: reconnect without waiting
                item = record
            if self._fresh(item):
                yield item
                if item.get("status") in TERMINAL:
                    return

    async def _close(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._keeper
        with contextlib.suppress(Exception):
            await self.sio.disconnect()


def _retry_after(error: TaskgateError) -> float | None:
    value = getattr(error, "retry_after", None)
    return value if isinstance(value, int | float) else None
