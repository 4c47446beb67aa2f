"""The context a running task receives: ``ctx.progress()``, ``ctx.cancelled``, ``ctx.retry()``,
and ``ctx.start()`` for child tasks (owned by the same user, linked by ``parent_id``).

Progress is coalesced: at most ``TASKGATE_PROGRESS_RATE`` updates per second per task are
published (default 20), the latest winning, so a task that reports inside a tight loop pays a
few hundred nanoseconds per call instead of a Redis round trip (bench/p7_progress.py). An update
held back is published when its window ends (a timer thread) or before the task's end (``close``),
so the last one is never lost. ``progress(100)`` is never held back, nor are status changes,
retries or the end (they are not progress). Each published update moves ``seq`` by one, and
``percent`` never goes back (transition.lua refuses a lower one)."""

from __future__ import annotations

import contextlib
import logging
import math
import threading
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
DEFAULT_PROGRESS_RATE = 20.0
_NUMBERS = (int, float)
_monotonic = time.monotonic
Pending = tuple[float, str | None, dict[str, Any]]


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
        progress_rate: float = DEFAULT_PROGRESS_RATE,
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
        # Coalescing: the earliest a next update may be published, the one held back until
        # then (latest wins), and the timer that publishes it. ``_lock`` makes taking the held
        # update and publishing it one step, so updates reach Redis in the order they were made.
        self._interval = 1.0 / progress_rate if progress_rate > 0 else 0.0
        self._next_at = 0.0
        self._pending: Pending | None = None
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def progress(self, percent: float, message: str | None = None, **data: Any) -> None:
        """Report progress; raise ``TaskCancelled`` if a cancel was asked meanwhile.

        ``percent`` is clamped to 0-100; a value below the last one is not published (the bar
        never goes back). ``data`` must be JSON-serializable. Within a coalescing window the
        update is held back (the module's doc); this path is a few hundred nanoseconds.
        """
        now = _monotonic()
        if type(percent) in _NUMBERS and 0.0 <= percent < 100.0:  # not bool, not a str
            pct = float(percent)  # the common case, nothing to check further
        else:
            pct = float(percent)
            if not math.isfinite(pct):
                raise ValueError("percent must be a finite number")
            pct = min(100.0, max(0.0, pct))
        if self._cancel:
            raise TaskCancelled("cancelled by request")
        if pct < 100.0 and now < self._next_at:
            # Held back, the latest winning; the timer publishes it when the window ends. No
            # lock: the timer takes ``_pending`` under its lock, and one armed after it took it
            # finds the newer one (or nothing).
            self._pending = (pct, message, data)
            if self._timer is None:
                self._arm(now)
            if now - self._cancel_checked > _CANCEL_POLL_S and self.cancelled:
                raise TaskCancelled("cancelled by request")
            return
        with self._lock:
            self._pending = None  # this one is newer
            self._publish(pct, message, data)
        if self._cancel:
            raise TaskCancelled("cancelled by request")

    def _arm(self, now: float) -> None:
        with self._lock:
            if self._timer is None:
                self._timer = threading.Timer(max(0.0, self._next_at - now), self._flush_due)
                self._timer.daemon = True
                self._timer.start()

    def _publish(self, pct: float, message: str | None, data: dict[str, Any]) -> None:
        """One progress transition (under ``_lock``); notes a cancel asked meanwhile."""
        self._next_at = time.monotonic() + self._interval
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

    def _flush_due(self) -> None:
        """The timer: publish the update held back, if it is still there."""
        with self._lock:
            self._timer = None
            pending, self._pending = self._pending, None
            if pending is not None:
                self._publish(*pending)

    def close(self) -> None:
        """Before the task's end is recorded: publish what is held back, stop the timer."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            pending, self._pending = self._pending, None
            if pending is not None:
                self._publish(*pending)

    @property
    def cancelled(self) -> bool:
        """True once a cancel was asked (read from the record at most every 250 ms)."""
        if not self._cancel and time.monotonic() - self._cancel_checked > _CANCEL_POLL_S:
            # Unknown during a Redis outage; asked again at the next poll.
            with contextlib.suppress(*_TRANSIENT):
                self._cancel = self._records.cancel_requested(self.task_id)
            self._cancel_checked = time.monotonic()
        return self._cancel

    @property
    def cancel_seen(self) -> bool:
        """True if a cancel is already known here (no read of the record)."""
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
