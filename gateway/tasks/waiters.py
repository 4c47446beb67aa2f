"""Result waiters: ``GET /api/tasks/{id}/result?wait=`` and ``execute_task`` wait here.

A waiter registers a future for the task before it reads the record, so an end that lands
during the read is not missed; the relay wakes it (``notify``) when the terminal update
arrives, and a poll every ``RESULT_POLL_S`` covers an update pub/sub lost.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable

from shared.errors import ResultTimeout
from shared.schema import Snapshot
from shared.status import TERMINAL_NAMES

RESULT_POLL_S = 1.0


class ResultWaiters:
    def __init__(self) -> None:
        self._waiters: dict[str, list[asyncio.Future[Snapshot]]] = defaultdict(list)

    @property
    def waiting(self) -> bool:
        """Whether any waiter is waiting for a task to end."""
        return bool(self._waiters)

    def notify(self, snap: Snapshot) -> None:
        """Wake whoever waits for this task's end (called for every update)."""
        if snap["status"] in TERMINAL_NAMES:
            for fut in self._waiters.pop(snap["task_id"], []):
                if not fut.done():
                    fut.set_result(snap)

    async def wait(
        self, task_id: str, read: Callable[[], Awaitable[Snapshot]], timeout: float
    ) -> Snapshot:
        """The task's terminal snapshot; ``ResultTimeout`` if it has not ended in ``timeout``.

        ``read`` reads the record and checks its owner (raising ``NotFound``); a notified
        snapshot is handed out only after a read has passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        while True:
            fut: asyncio.Future[Snapshot] = loop.create_future()
            self._waiters[task_id].append(fut)
            try:
                snap = await read()
                if snap["status"] in TERMINAL_NAMES:
                    return snap
                remaining = deadline - loop.time()
                if remaining > 0:
                    await asyncio.wait((fut,), timeout=min(remaining, RESULT_POLL_S))
                if fut.done():
                    return fut.result()
                if remaining <= 0:
                    raise ResultTimeout(
                        f"task has not ended after {timeout:g}s", details={"task_id": task_id}
                    )
            finally:
                waiting = self._waiters.get(task_id)
                if waiting is not None and fut in waiting:
                    waiting.remove(fut)
                    if not waiting:
                        del self._waiters[task_id]
