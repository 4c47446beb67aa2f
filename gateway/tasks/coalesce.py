"""Group commit for single submits: the requests that arrive together are written together.

A Redis round trip through redis-py costs far more CPU than the work it carries, and on a busy
gateway many submits are in flight at once. So instead of each making its own round trips they
join a group: the first one in starts a collector, which on its next turn takes every submit
that arrived meanwhile and accepts each user's share in a few pieces (``pieces``: up to
``PIECES`` of at least ``LEAST_PIECE``, none over ``MAX_GROUP``), each in one go
(``TaskService._accept_group``: one token take, then, with the Redis broker on the records'
Redis, one script run that writes every record, message, outbox copy and PENDING update).
Submits arriving while a group is being written form the next group; up to ``MAX_WRITING``
groups are written at once, and while all are, the next one keeps growing. Under no load a
group is one submit and costs what it did alone, plus one turn of the loop.

Every submit still gets its own answer: its snapshot, or its own error (429 when the user's
bucket ran dry part way through the group, 503 when the broker refused the group: then nothing
of it was accepted). A caller that goes away (a closed connection) does not pull its task out
of a group already being written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from shared.errors import TaskgateError

MAX_GROUP = 1000
# The submits collected at once are written in up to PIECES pieces of at least LEAST_PIECE,
# sent one after the other: Redis starts on the first while the next is built, and the first
# answers go out while it runs the rest. Written whole, a group of all the submits in flight
# made the gateway and Redis wait on each other in turn (P1: the gateway ~20% idle).
PIECES = 4
LEAST_PIECE = 8
# Groups written at once: while one waits for Redis, the next one is collected and sent.
MAX_WRITING = 4

Item = TypeVar("Item")
Answer = TypeVar("Answer")
Accept = Callable[[str, list[Item]], Awaitable[list["Answer | TaskgateError"]]]


def pieces(n: int, least: int, parts: int, most: int) -> list[tuple[int, int]]:
    """``(start, end)`` of the pieces ``n`` items are written in: ``parts`` pieces of equal
    size, but none under ``least`` nor over ``most``."""
    size = max(1, min(most, max(least, -(-n // parts))))
    return [(start, min(n, start + size)) for start in range(0, n, size)]


class Coalescer(Generic[Item, Answer]):
    def __init__(
        self,
        accept: Accept[Item, Answer],
        max_group: int = MAX_GROUP,
        max_writing: int = MAX_WRITING,
        pieces: int = PIECES,
        least_piece: int = LEAST_PIECE,
    ) -> None:
        self._accept = accept
        self.max_group = max_group
        self.pieces = pieces
        self.least_piece = least_piece
        self._slots = asyncio.Semaphore(max_writing)
        self._waiting: dict[str, list[tuple[Item, asyncio.Future[Answer]]]] = {}
        # The group still taking submits (it waits for a slot, then one turn of the loop).
        self._collector: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # How many groups were written, and how many submits they held (for metrics).
        self.groups = 0
        self.items = 0

    async def submit(self, user: str, item: Item) -> Answer:
        fut: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(user, []).append((item, fut))
        if self._collector is None:
            task = asyncio.create_task(self._collect(), name="taskgate-submit-group")
            self._collector = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await fut

    async def _collect(self) -> None:
        async with self._slots:
            # One turn of the loop, so the submits of requests already read join this group.
            await asyncio.sleep(0)
            waiting, self._waiting = self._waiting, {}
            self._collector = None
            groups = []
            for user, items in waiting.items():
                for start, end in pieces(len(items), self.least_piece, self.pieces, self.max_group):
                    groups.append(self._flush(user, items[start:end]))
            await asyncio.gather(*groups)

    async def close(self) -> None:
        """Let the groups being written finish (their submits get their answers)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _flush(self, user: str, items: list[tuple[Item, asyncio.Future[Answer]]]) -> None:
        self.groups += 1
        self.items += len(items)
        try:
            answers = await self._accept(user, [item for item, _ in items])
        except asyncio.CancelledError:
            for _, fut in items:
                fut.cancel()
            raise
        except Exception as exc:  # handed to every waiter of the group
            for _, fut in items:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (_, fut), answer in zip(items, answers, strict=True):
            if fut.done():
                continue
            if isinstance(answer, TaskgateError):
                fut.set_exception(answer)
            else:
                fut.set_result(answer)
