"""The rolled-up ``workflow`` snapshot, pushed to the owner after a child of it changes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.tasks.workflows import Workflows
from shared.errors import NotFound

log = logging.getLogger("taskgate.workflows")


class WorkflowNotifier:
    """Pushes the rolled-up ``workflow`` snapshot to the owner after a child changes.

    Runs beside the relay, never inside it: a burst of child updates for one workflow costs one
    roll-up in flight plus at most one more (the latest wins), not one per update.
    """

    def __init__(
        self, workflows: Workflows, emit: Callable[[str, dict[str, Any]], Awaitable[None]]
    ):
        self.workflows = workflows
        self.emit = emit
        self._busy: set[str] = set()
        self._again: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def child_changed(self, owner: str, wid: str) -> None:
        if wid in self._busy:
            self._again.add(wid)
            return
        self._busy.add(wid)
        task = asyncio.create_task(self._push(owner, wid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _push(self, owner: str, wid: str) -> None:
        try:
            while True:
                self._again.discard(wid)
                try:
                    await self.emit(owner, await self.workflows.snapshot(owner, wid))
                except NotFound:
                    return
                except Exception:
                    log.exception("could not push workflow %s", wid)
                    return
                if wid not in self._again:
                    return
        finally:
            self._busy.discard(wid)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
