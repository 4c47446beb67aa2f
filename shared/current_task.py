"""The taskgate task running in this thread, if any: whose code a producer call comes from.

The worker's runner marks each run (``running(ctx)``); a producer call made inside it
(``some_task.delay()``, ``.apply_async()``, ``.s()``, ``ctx.start()``) starts a child owned by
the same user and linked to it (``parent_id``), and ``TaskHandle.get`` refuses to block a
worker on another task, as Celery's ``AsyncResult.get`` does. A thread the task starts has a
context of its own: calls from there are not linked.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol


class RunningTask(Protocol):
    """What a child needs of the task that starts it."""

    @property
    def task_id(self) -> str: ...

    @property
    def owner(self) -> str: ...


_RUNNING: ContextVar[RunningTask | None] = ContextVar("taskgate_running_task", default=None)


def running_task() -> RunningTask | None:
    """The task whose code is running here, or ``None`` outside a task."""
    return _RUNNING.get()


@contextmanager
def running(task: RunningTask) -> Iterator[None]:
    """Mark ``task`` as the one running inside the block."""
    token = _RUNNING.set(task)
    try:
        yield
    finally:
        _RUNNING.reset(token)
