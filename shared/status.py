"""Task statuses and the terminal set."""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    """The lifecycle of a task. The last four are terminal: once reached, nothing changes."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    RETRYING = "RETRYING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL: frozenset[TaskStatus] = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.TIMED_OUT, TaskStatus.CANCELLED}
)
TERMINAL_NAMES: frozenset[str] = frozenset(s.value for s in TERMINAL)
