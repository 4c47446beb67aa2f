"""The context a running task receives: ``ctx.progress()``, ``ctx.cancelled``, ``ctx.retry()``,
and ``ctx.start()`` for child tasks (owned by the same user, linked by ``parent_id``)."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import producer
from shared.errors import NotFound, RetryRequested, TaskCancelled
from shared.handle import TaskHandle
from shared.records import SyncRecords
from shared.registry import RegisteredTask, get_task
from shared.tracing import new_trace

log = logging.getLogger("taskgate.worker")
# A progress update lost to a Redis outage is dropped, not retried: the task keeps running and
# its next update (or its terminal status, which is retried) brings the record up to date.
_TRANSIENT = (RedisConnectionError, RedisTimeoutError, OSError)

# How stale the cached cancel flag may be when a task polls ``ctx.cancelled`` in a tight loop.
_CANCEL_POLL_S = 0.25


class Context:
    """Bound to one run of one task; reports through atomic record transitions."""

    def __init__(
        self,
        task_id: str,
        records: SyncRecords,
        attempt: int = 1,
        *,
        owner: str | None = None,
        trace_id: str | None = None,
    ) -> None:
        self.task_id = task_id
        self.attempt = attempt
        # The W3C trace this task belongs to (its snapshot's ``trace_id``; shared.tracing):
        # children it starts share it.
        self.trace_id = trace_id or new_trace().trace_id
        # The previous step's result in a chain, the header results in a chord's body.
        self.parent_result: Any = None
        self._records = records
        self._owner = owner
        self._cancel = False
        self._cancel_checked = 0.0

    def progress(self, percent: float, message: str | None = None, **data: Any) -> None:
        """Report progress; raise ``TaskCancelled`` if a cancel was asked meanwhile.

        ``percent`` is clamped to 0-100; a value below the last one is not published (the bar
        never goes back). ``data`` must be JSON-serializable.
        """
        pct = float(percent)
        if not math.isfinite(pct):
            raise ValueError("percent must be a finite number")
        pct = min(100.0, max(0.0, pct))
        try:
            result = self._records.transition(
                self.task_id,
                "progress",
                percent=pct,
                fields={"progress": {"percent": pct, "message": message, "data": data}},
            )
        except _TRANSIENT as exc:
            log.warning("progress of %s dropped: Redis unreachable (%s)", self.task_id, exc)
            return
        self._cancel_checked = time.monotonic()
        if result.cancel_requested:
            self._cancel = True
            raise TaskCancelled("cancelled by request")

    @property
    def cancelled(self) -> bool:
        """True once a cancel was asked (read from the record at most every 250 ms)."""
        if not self._cancel and time.monotonic() - self._cancel_checked > _CANCEL_POLL_S:
            # Unknown during a Redis outage; asked again at the next poll.
            with contextlib.suppress(*_TRANSIENT):
                self._cancel = self._records.cancel_requested(self.task_id)
            self._cancel_checked = time.monotonic()
        return self._cancel

    def retry(self, countdown: float | None = None, exc: BaseException | None = None) -> None:
        """Run the task again after ``countdown`` seconds (else its backoff), if it has retries
        left; otherwise it ends FAILED with ``exc`` (or "retry requested")."""
        raise RetryRequested(countdown, exc)

    def raise_if_cancelled(self) -> None:
        if self.cancelled:
            raise TaskCancelled("cancelled by request")

    @property
    def owner(self) -> str:
        """The user this task belongs to (read from its record once, when first asked)."""
        if self._owner is None:
            self._owner = self._records.owner(self.task_id)
            if self._owner is None:
                raise NotFound(f"task {self.task_id} has no record")
        return self._owner

    def start(self, task: str | RegisteredTask[..., Any], /, **input: Any) -> TaskHandle:
        """Start a child task, by name or ``@task`` object, with this input: checked and
        recorded before it is published, owned by this task's user, its snapshot's
        ``parent_id`` this task. ``task.apply_async(...)`` called inside the task does the same
        with Celery's options (countdown, queue, ...)."""
        spec = get_task(task) if isinstance(task, str) else task.spec
        sender = producer.producer()
        return sender.send(sender.check(spec, None, input, parent=self))
