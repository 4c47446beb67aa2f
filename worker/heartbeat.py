"""Heartbeats of the running tasks: one daemon thread per worker process stamps the record of
every task that process runs, every ``TASKGATE_TASK_HEARTBEAT_S`` seconds.

A beat says the process is alive, not that the task is moving (progress says that), so a missing
heartbeat means the worker process is gone or frozen. One thread per process, started on the
first run and kept, instead of one started and joined per run: with prefork each pool process
runs one task at a time, and a thread per run cost about 1 ms per task (bench/p8_runner.py).
The move to RUNNING is itself the first beat (transition.lua), so a run's first beat here is
one interval after it starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator

from redis.exceptions import RedisError

from shared.records import HeartbeatCode, SyncRecords

log = logging.getLogger("taskgate.worker")

# A heartbeat that finds the task no longer RUNNING (or its record gone) stops its beating.
_DONE = (HeartbeatCode.NOT_RUNNING, HeartbeatCode.MISSING)


class _Run:
    """One run being beaten: its records, its interval, when its next beat is due."""

    __slots__ = ("due", "interval", "records")

    def __init__(self, records: SyncRecords, interval: float, due: float) -> None:
        self.records = records
        self.interval = interval
        self.due = due


class Heartbeats:
    """The runs of this process and the one thread beating them."""

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        # In a forked child: no thread runs here, and the parent's lock may have been held.
        self._cond = threading.Condition(threading.Lock())
        self._runs: dict[str, _Run] = {}
        self._thread: threading.Thread | None = None
        # When the thread wakes next (monotonic): a run due before that wakes it sooner. With
        # no run it still wakes every interval, so that the next run (due one interval after it
        # starts) never needs to wake it: with prefork a run starts per task.
        self._wake_at = 0.0
        self._idle_s = 1.0

    @contextlib.contextmanager
    def beating(self, records: SyncRecords, task_id: str, interval: float) -> Iterator[None]:
        """Beat ``task_id``'s record while the block runs."""
        run = _Run(records, interval, time.monotonic() + interval)
        with self._cond:
            self._runs[task_id] = run
            self._idle_s = interval
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._beat_forever, name="taskgate-heartbeats", daemon=True
                )
                self._thread.start()
            elif run.due < self._wake_at:
                self._cond.notify()
        try:
            yield
        finally:
            self._drop(task_id, run)

    def _drop(self, task_id: str, run: _Run) -> None:
        with self._cond:
            # Only this run's entry: a later run of the same task may have replaced it.
            if self._runs.get(task_id) is run:
                del self._runs[task_id]

    def _beat_forever(self) -> None:
        while True:
            due = self._wait_for_due()
            for task_id, run in due:
                try:
                    result = run.records.heartbeat(task_id)
                except RedisError as exc:
                    log.warning("heartbeat of %s failed: %s", task_id, type(exc).__name__)
                    continue
                except Exception:
                    # The one thread beats every later run of this process too: it must not end.
                    log.exception("heartbeat of %s failed", task_id)
                    continue
                if result.code in _DONE:
                    self._drop(task_id, run)  # it left RUNNING: nothing to keep alive

    def _wait_for_due(self) -> list[tuple[str, _Run]]:
        """Sleep until a beat is due; the runs due, their next beat scheduled."""
        with self._cond:
            while True:
                now = time.monotonic()
                due = [(t, r) for t, r in self._runs.items() if r.due <= now]
                if due:
                    for _, run in due:
                        run.due = now + run.interval
                    return due
                soonest = min((r.due for r in self._runs.values()), default=now + self._idle_s)
                self._wake_at = soonest
                self._cond.wait(soonest - now)


HEARTBEATS = Heartbeats()
