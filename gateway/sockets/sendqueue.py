"""A small send queue for each Engine.IO socket, in place of ``asyncio.Queue``.

python-engineio gives every socket an ``asyncio.Queue`` (``AsyncServer.create_queue``) that its
writer task drains. An idle ``asyncio.Queue`` holds four ``collections.deque`` objects (its items,
its getters, its putters and its ``join`` event's waiters), ~3 KiB per connection, and its
``get()`` is a coroutine, so python-engineio's ``asyncio.wait_for(queue.get(), ...)`` wraps it in
one more task per poll, which stays alive while the writer waits: with 10,000 idle connections
that is ~40 MiB of queues and parked tasks (docs/PERFORMANCE.md, "P5 memory per connection").

``SendQueue`` keeps what python-engineio and the gateway use of a queue (``get``, ``get_nowait``,
``put``, ``put_nowait``, ``task_done``, ``join``, ``qsize``, ``empty``, ``full``, and
``_getters``, the parked getters the fan-out checks before writing a frame directly,
``gateway.live.fanout.write_direct``), unbounded, FIFO, with these differences in how, not what:

- ``get()`` returns a future, not a coroutine (``wait_for`` awaits it without a task); an item put
  while a getter waits is handed to that getter at once (so it is no longer in ``_getters`` nor
  counted by ``qsize``: a direct frame written after it still goes after it, through the queue);
- the item store exists only while items wait, and ``join``'s event only while someone joins.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any


class SendQueue:
    """An unbounded FIFO queue for one consumer task; see the module doc."""

    __slots__ = ("_finished", "_getters", "_items", "_unfinished", "maxsize")

    def __init__(self, maxsize: int = 0) -> None:
        if maxsize:
            raise ValueError("SendQueue is unbounded (python-engineio asks for maxsize 0)")
        self.maxsize = 0
        self._items: collections.deque[Any] | None = None
        self._getters: list[asyncio.Future[Any]] = []
        self._unfinished = 0
        self._finished: asyncio.Event | None = None

    def qsize(self) -> int:
        return len(self._items) if self._items else 0

    def empty(self) -> bool:
        return not self._items

    def full(self) -> bool:
        return False

    def put_nowait(self, item: Any) -> None:
        self._unfinished += 1
        while self._getters:
            getter = self._getters.pop(0)
            if not getter.done():
                getter.set_result(item)
                return
        if self._items is None:
            self._items = collections.deque()
        self._items.append(item)

    async def put(self, item: Any) -> None:
        self.put_nowait(item)

    def get_nowait(self) -> Any:
        items = self._items
        if not items:
            raise asyncio.QueueEmpty
        item = items.popleft()
        if not items:
            self._items = None
        return item

    def get(self) -> asyncio.Future[Any]:
        """A future of the next item (awaitable; cancelling it gives up the wait)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        if self._items:
            fut.set_result(self.get_nowait())
            return fut
        self._getters.append(fut)
        fut.add_done_callback(self._getter_done)
        return fut

    def _getter_done(self, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled() and fut in self._getters:
            self._getters.remove(fut)

    def task_done(self) -> None:
        if self._unfinished <= 0:
            raise ValueError("task_done() called too many times")
        self._unfinished -= 1
        if self._unfinished == 0 and self._finished is not None:
            self._finished.set()
            self._finished = None

    async def join(self) -> None:
        if self._unfinished == 0:
            return
        if self._finished is None:
            self._finished = asyncio.Event()
        await self._finished.wait()
