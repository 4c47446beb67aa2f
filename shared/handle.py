"""A task sent from Python, by id: ``handle.status()`` now, ``handle.get(timeout=)`` once it ended.

``.delay()`` and ``.apply_async()`` return one (``shared.producer``); ``producer().handle(id)``
makes one for any task id, such as a step of a canvas sent with Celery's own API. Both read the
task's record, the same snapshot the gateway answers, so what a Python caller sees is what the
owner's sockets see.

``get`` returns the result of a COMPLETED task and raises for the other ends::

    TaskgateError
    ├── ResultTimeout        (shared.errors) the task did not end within ``timeout``
    └── TaskEnded            the task ended without a result; ``.snapshot``, ``.status``, ``.error``
        ├── TaskFailed       FAILED (``.error`` is the task's ``{"type", "message"}``)
        ├── TaskTimedOut     TIMED_OUT
        └── TaskWasCancelled CANCELLED (``error.type`` ``Expired`` for an expired one)
"""

from __future__ import annotations

import time
from typing import Any

from shared.current_task import running_task
from shared.errors import NotFound, ResultTimeout, TaskgateError
from shared.records import SyncRecords
from shared.schema import ErrorInfo, Snapshot
from shared.status import TaskStatus
from shared.store_errors import store_errors

# How often ``get`` reads the record: from the first interval, growing to the last.
FIRST_POLL_S = 0.02
LAST_POLL_S = 0.25


class TaskEnded(TaskgateError):
    """The task ended without a result (FAILED, TIMED_OUT or CANCELLED)."""

    code = "task_ended"

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.status = snapshot["status"]
        self.error: ErrorInfo | None = snapshot["error"]
        why = f": {self.error['type']}: {self.error['message']}" if self.error else ""
        what = f"task {snapshot['task_id']} ({snapshot['task']})"
        super().__init__(f"{what} ended {self.status}{why}")


class TaskFailed(TaskEnded):
    code = "task_failed"


class TaskTimedOut(TaskEnded):
    code = "task_timed_out"


class TaskWasCancelled(TaskEnded):
    code = "task_cancelled"


_ENDED: dict[str, type[TaskEnded]] = {
    TaskStatus.FAILED: TaskFailed,
    TaskStatus.TIMED_OUT: TaskTimedOut,
    TaskStatus.CANCELLED: TaskWasCancelled,
}


class TaskHandle:
    """One task, by id: its snapshot (``status``) and its result (``get``)."""

    def __init__(self, task_id: str, records: SyncRecords) -> None:
        self.id = task_id
        self._records = records

    @property
    def task_id(self) -> str:
        """The task id (Celery's ``AsyncResult.task_id``)."""
        return self.id

    def __repr__(self) -> str:
        return f"<TaskHandle {self.id}>"

    def _snapshot(self) -> Snapshot | None:
        with store_errors():
            return self._records.snapshot(self.id)

    def status(self) -> Snapshot:
        """The task's snapshot now (status, seq, progress, result, error, ...); ``NotFound``
        when it has no record (expired, or a Celery-sent task no worker took yet)."""
        snap = self._snapshot()
        if snap is None:
            raise NotFound(f"no record of task {self.id}")
        return snap

    def get(self, timeout: float | None = None, *, disable_sync_subtasks: bool = True) -> Any:
        """Wait for the task to end; its result if it COMPLETED, else ``TaskEnded`` (one of
        its subclasses). ``ResultTimeout`` after ``timeout`` seconds (``None``: no limit); the
        task goes on. A task that has no record yet (a Celery-sent one waiting for a worker)
        is waited for as well.

        Inside a running task this refuses (``RuntimeError``), as Celery does: a worker
        blocked on a task that needs a worker can wait forever. ``disable_sync_subtasks=False``
        allows it."""
        if disable_sync_subtasks and running_task() is not None:
            raise RuntimeError(
                "never call TaskHandle.get() within a task (disable_sync_subtasks=False allows it)"
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = FIRST_POLL_S
        while True:
            snap = self._snapshot()
            if snap is not None and snap["status"] == TaskStatus.COMPLETED:
                return snap["result"]
            if snap is not None and snap["status"] in _ENDED:
                raise _ENDED[snap["status"]](snap)
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                state = snap["status"] if snap is not None else "without a record"
                raise ResultTimeout(
                    f"task {self.id} did not end within {timeout:g}s (still {state})",
                    details={"task_id": self.id},
                )
            time.sleep(pause if left is None else min(pause, left))
            pause = min(LAST_POLL_S, pause * 1.5)
