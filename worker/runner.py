"""Runs one registered task inside a Celery task, turning its life into record transitions.

What each run does, in order (docs/RELIABILITY.md explains why):

1. validates the input again (the broker is not trusted either);
2. counts the run in the record (``_attempt``); a task whose earlier runs all killed their
   worker process (``TASKGATE_MAX_ATTEMPTS`` of them) ends FAILED instead of running again;
3. moves the record to RUNNING unless it already ended (a cancelled task never runs, however
   often its message is delivered) and starts a heartbeat thread that stamps the record every
   ``TASKGATE_TASK_HEARTBEAT_S`` seconds while the run lasts;
4. runs the function and records exactly one terminal status. Terminal writes are retried
   through short Redis outages; progress updates are dropped during one (the record keeps the
   truth, the next update or the relay's resync repairs the view).

A delivery that does not run (another run did or does the work, or the record is gone or has
ended) raises Celery's ``Ignore``: the message is acked, no result is stored, and no chain or
chord goes on from it (the run that did the work, or ``settle_workflow``, decides what follows).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from celery import Celery, Task
from celery.exceptions import Ignore, Reject, SoftTimeLimitExceeded
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.celery_config import visibility_timeout
from shared.current_task import running
from shared.errors import InvalidInput, RetryRequested, TaskCancelled
from shared.records import HeartbeatCode, SyncRecords, TransitionCode, TransitionResult
from shared.registry import RetryPolicy, TaskSpec
from shared.send_options import PARENT_HEADER
from shared.settings import Settings
from shared.status import TERMINAL_NAMES, TaskStatus
from worker import webhooks
from worker.adopt import RECORDED_HEADER, adopt, header, owner_of, queue_of
from worker.context import Context
from worker.engines import invoke
from worker.metrics import metrics
from worker.run_trace import message_trace_id, run_trace, traced_run
from worker.store import RecordsPerProcess
from worker.workflow import settle_workflow

log = logging.getLogger("taskgate.worker")

T = TypeVar("T")

_NON_TERMINAL = (TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.RETRYING)
# Redis errors worth retrying: the server is away, not the command wrong.
TRANSIENT = (RedisConnectionError, RedisTimeoutError, OSError)
# How long a terminal write keeps retrying through a Redis outage before giving up.
FINISH_RETRY_S = 60.0
# A run is presumed dead after this many missed heartbeats (the gateways' stall check agrees).
STALE_AFTER_BEATS = 3
# A heartbeat that finds the task no longer RUNNING (or its record gone) stops the beating.
_HEARTBEAT_DONE = (HeartbeatCode.NOT_RUNNING, HeartbeatCode.MISSING)


def retrying(fn: Callable[[], T], what: str, deadline_s: float = FINISH_RETRY_S) -> T:
    """Call ``fn``, retrying transient Redis errors with capped, jittered backoff."""
    deadline = time.monotonic() + deadline_s
    delay = 0.1
    while True:
        try:
            return fn()
        except TRANSIENT as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("%s: Redis unreachable (%s); retrying", what, type(exc).__name__)
            time.sleep(random.uniform(delay / 2, delay))
            delay = min(delay * 2, 2.0)


def _error(exc: BaseException) -> dict[str, str]:
    return {"type": type(exc).__name__, "message": str(exc)[:2000]}


def finish(
    records: SyncRecords,
    task_id: str,
    status: TaskStatus,
    *,
    retry_s: float = FINISH_RETRY_S,
    **fields: Any,
) -> None:
    """Record the terminal status (a no-op if the task already ended).

    Retried through a Redis outage for ``retry_s`` seconds (less in the worker's main process,
    whose event loop must not stall).
    """
    if status is TaskStatus.COMPLETED:
        fields.setdefault("progress", {"percent": 100.0, "message": "completed", "data": {}})
    finished = {"finished_at": time.time(), **fields}
    result = retrying(
        lambda: records.transition(
            task_id,
            "status",
            status=status,
            percent=100.0 if status is TaskStatus.COMPLETED else None,
            fields=finished,
        ),
        f"recording {status.value} for {task_id}",
        retry_s,
    )
    if result.applied:
        webhooks.after_terminal(records, task_id, result.snapshot)


class Heartbeat:
    """A daemon thread that stamps a running task's record every ``interval`` seconds.

    It beats as long as the process lives, so a missing heartbeat means the worker process is
    gone or frozen, not that the task is slow (progress says that).
    """

    def __init__(self, records: SyncRecords, task_id: str, interval: float) -> None:
        self.records = records
        self.task_id = task_id
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"taskgate-heartbeat-{task_id[:8]}", daemon=True
        )

    def beat(self) -> TransitionResult | None:
        try:
            return self.records.heartbeat(self.task_id)
        except RedisError as exc:
            log.warning("heartbeat of %s failed: %s", self.task_id, type(exc).__name__)
            return None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            result = self.beat()
            if result is not None and result.code in _HEARTBEAT_DONE:
                return  # the task left RUNNING (or its record is gone): nothing to keep alive

    def __enter__(self) -> Heartbeat:
        # No beat here: the move to RUNNING just stamped the heartbeat (transition.lua), so the
        # thread's first beat, one interval later, is the first one due (a round trip less per
        # task: bench/p8_runner.py).
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _heartbeat_age(store: SyncRecords, task_id: str) -> tuple[str | None, float | None, int | None]:
    """The record's status, how long ago (by the Redis clock) its run last beat, and the
    attempt it is at."""
    status, hb, attempt = store.client.hmget(store.keys.task(task_id), ["status", "_hb", "attempt"])
    if status is None:
        return None, None, None
    text = status.decode() if isinstance(status, bytes) else str(status)
    at = int(attempt) if attempt not in (None, b"null", "null") else None
    if hb is None:
        return text, None, at
    secs, micros = store.client.time()
    return text, secs + micros / 1e6 - float(hb), at


def _wait_for_live_run(store: SyncRecords, task_id: str, interval: float, attempt: int) -> bool:
    """Wait while another run of this task is alive; False if that run ended the task.

    On a lost broker connection kombu hands un-acked messages back at once, so a task still
    running elsewhere is delivered again. Running it twice at the same time would waste the
    work and do its side effects twice; acking this copy would lose the task if the other run
    then died. So this copy waits, and runs only once the other run has gone silent for
    ``STALE_AFTER_BEATS`` heartbeats.
    """
    limit = STALE_AFTER_BEATS * interval
    status, age, at = retrying(lambda: _heartbeat_age(store, task_id), f"reading {task_id}")
    if at is not None and at > attempt:
        # This delivery's attempt already ended in a retry (its ack was lost with its worker):
        # the retry's own message runs the next attempt.
        log.info("task %s: attempt %d already retried; not running it again", task_id, attempt)
        return False
    if status != '"RUNNING"' or age is None or age >= limit:
        return True
    log.warning("task %s is running elsewhere (heartbeat %.1fs ago); waiting", task_id, age)
    while True:
        time.sleep(interval)
        status, age, at = retrying(lambda: _heartbeat_age(store, task_id), f"reading {task_id}")
        if status is None or status.strip('"') in TERMINAL_NAMES:
            log.info("task %s ended in its other run; not running it again", task_id)
            return False
        if at is not None and at > attempt:
            # The other run ended this attempt in a retry: the retry's message runs the next.
            log.info("task %s: attempt %d retried in its other run; not running it again",
                     task_id, attempt)  # fmt: skip
            return False
        if status != '"RUNNING"' or age is None or age >= limit:
            log.warning("task %s: its other run went silent; taking over", task_id)
            return True


def _worker_lost_error(attempts: int) -> dict[str, str]:
    return {
        "type": "WorkerLost",
        "message": (
            f"the worker process died during each of the task's {attempts} runs "
            "(killed, out of memory, or crashed); it is not run again"
        ),
    }


def register_celery_task(app: Celery, spec: TaskSpec, records: RecordsPerProcess) -> None:
    """Bind a registry entry to a Celery task of the same name."""
    settings = records.settings

    @app.task(  # type: ignore[untyped-decorator]
        name=spec.name,
        bind=True,
        queue=spec.queue,
        # Messages sent with Celery's own API carry no timelimit: the task's own apply.
        soft_time_limit=spec.soft_time_limit,
        time_limit=spec.time_limit,
    )
    def run(self: Task, *args: Any, **kwargs: Any) -> Any:
        try:
            return execute(self, *args, **kwargs)
        finally:
            settle_workflow(self.request, records.get())

    def execute(self: Task, *args: Any, **kwargs: Any) -> Any:
        task_id: str = self.request.id
        store = records.get()

        def adopt_native(task: Task) -> str:
            """Give a message sent with Celery's own API (send_task, .delay(), a canvas, beat)
            its record; the owner it was adopted for."""
            owner = owner_of(task.request, settings)
            queue = queue_of(task.request, spec.queue)
            adopted = retrying(
                lambda: adopt(
                    store,
                    task_id,
                    spec.name,
                    queue,
                    owner,
                    settings,
                    message_trace_id(task.request),
                ),
                f"adopting {task_id}",
            )
            if adopted:
                metrics().adopted.labels(spec.name).inc()
            return owner

        try:
            data = spec.schema.arguments(kwargs)
        except InvalidInput as exc:
            # Not run; recorded FAILED, also when Celery's own API sent it (a record first).
            recorded = header(self.request, RECORDED_HEADER) or retrying(
                lambda: store.owner(task_id), f"reading the owner of {task_id}"
            )
            if not recorded:
                adopt_native(self)
            finish(store, task_id, TaskStatus.FAILED, error=_error(exc))
            return None

        def begin(
            task: Task, store: SyncRecords, task_id: str, previous: int, attempt: int
        ) -> tuple[TransitionResult, str | None]:
            """Move the record to RUNNING as run ``previous + 1``; adopt a message that has no
            record first. The start and the owner it was adopted for (else None)."""
            now = time.time()

            def start(**extra: Any) -> TransitionResult:
                return retrying(
                    lambda: store.transition(
                        task_id,
                        "status",
                        status=TaskStatus.RUNNING,
                        only_if=_NON_TERMINAL,
                        runs_before=previous,
                        fields={
                            "started_at": now,
                            "_attempt": previous + 1,
                            "attempt": attempt,
                            "next_attempt_at": None,
                            **extra,
                        },
                    ),
                    f"starting {task_id}",
                )

            started = start()
            if not started.missing or header(task.request, RECORDED_HEADER):
                return started, None
            # Sent with Celery's own API (send_task, .delay(), a canvas, beat): no record yet.
            owner = adopt_native(task)
            # A signature built inside a task (shared.producer) names that task its parent.
            parent = header(task.request, PARENT_HEADER)
            linked = isinstance(parent, str) and 0 < len(parent) <= 64
            return start(**({"parent_id": parent} if linked else {})), owner

        # Retries (Celery's own, ``Task.retry``) count in the message; the first run is 1.
        attempt = int(self.request.retries or 0) + 1
        while True:
            if not _wait_for_live_run(store, task_id, settings.task_heartbeat_s, attempt):
                raise Ignore()  # another run did or does this attempt's work
            # Runs are counted before they start: a run that kills its process cannot count
            # itself afterwards, and task_reject_on_worker_lost hands its message straight back.
            previous = retrying(lambda: store.attempts(task_id), f"reading attempts of {task_id}")
            if previous >= settings.max_attempts:
                log.error("task %s (%s) killed its worker %d times; failing it", task_id,
                          spec.name, previous)  # fmt: skip
                finish(store, task_id, TaskStatus.FAILED, error=_worker_lost_error(previous))
                return None
            started, owner = begin(self, store, task_id, previous, attempt)
            if started.code != TransitionCode.SKIPPED:
                break
            # Another delivery of this task started a run between our check and our start (the
            # start applies only at the run count we read): wait for that run like any other.
            log.warning("task %s: another delivery started it first; waiting", task_id)
            time.sleep(settings.task_heartbeat_s)
        if started.missing:
            log.warning("task %s (%s) has no record (discarded or expired); not running it",
                        task_id, spec.name)  # fmt: skip
            raise Ignore()
        if started.already_terminal:
            log.info("task %s already ended (cancelled?); not running it", task_id)
            # Cancelled while queued (the gateway ended it), or a redelivery: its webhook, if
            # any and still pending, is queued from here.
            webhooks.after_terminal(store, task_id, None)
            raise Ignore()
        if previous:
            log.warning("task %s (%s): run %d (an earlier run was lost)", task_id, spec.name,
                        previous + 1)  # fmt: skip
        trace = run_trace(self.request, started.snapshot)
        ctx = Context(
            task_id,
            store,
            attempt,
            owner=owner,
            trace_id=trace.trace_id,
            progress_rate=settings.progress_rate,
        )
        # In a chain or a chord's body, Celery passes the previous result(s) first.
        ctx.parent_result = args[0] if args else None
        if started.cancel_requested:
            finish(store, task_id, TaskStatus.CANCELLED)
            return None
        active = metrics().active.labels(queue_of(self.request, spec.queue))
        active.inc()
        try:
            with (
                Heartbeat(store, task_id, settings.task_heartbeat_s),
                traced_run(spec, task_id, trace, owner),
            ):
                return _run(self, spec, ctx, store, task_id, data, settings)
        finally:
            active.dec()


def _run(
    task: Task,
    spec: TaskSpec,
    ctx: Context,
    store: SyncRecords,
    task_id: str,
    data: dict[str, Any],
    settings: Settings,
) -> Any:
    try:
        # Producer calls inside the task start its children (shared.current_task).
        with running(ctx):
            try:
                result = invoke(spec, ctx, data)
            finally:
                ctx.close()  # the progress held back (coalescing) goes out before the end
    except RetryRequested as asked:
        return _retry_or_fail(task, spec, settings, ctx, store, asked.exc or asked, asked.countdown)
    except TaskCancelled:
        finish(store, task_id, TaskStatus.CANCELLED)
        return None
    except SoftTimeLimitExceeded:
        soft_limit = spec.soft_time_limit or settings.soft_time_limit
        finish(
            store,
            task_id,
            TaskStatus.TIMED_OUT,
            error={
                "type": "TimeLimitExceeded",
                "message": f"soft time limit ({soft_limit:g}s) exceeded",
            },
        )
        raise
    except Exception as exc:
        if spec.retry is not None and isinstance(exc, spec.retry.retry_for):
            return _retry_or_fail(task, spec, settings, ctx, store, exc, None)
        finish(store, task_id, TaskStatus.FAILED, error=_error(exc))
        raise
    if ctx.cancelled:
        finish(store, task_id, TaskStatus.CANCELLED)
        return None
    try:
        finish(store, task_id, TaskStatus.COMPLETED, result=result)
    except TypeError as exc:
        finish(
            store,
            task_id,
            TaskStatus.FAILED,
            error={
                "type": "ResultNotJSON",
                "message": f"result is not JSON-serializable: {exc}",
            },
        )
        raise
    return result


def _retry_or_fail(
    task: Task,
    spec: TaskSpec,
    settings: Settings,
    ctx: Context,
    store: SyncRecords,
    exc: BaseException,
    countdown: float | None,
) -> Any:
    """Another attempt if the task's policy has one left: the record goes RETRYING (with the
    next attempt's number and time, the error so far, percent back to 0) and Celery's own
    ``Task.retry`` publishes the message again with that countdown. Else FAILED with ``exc``.

    ``Task.retry`` raises ``Retry``: the worker acks this delivery only after the new message is
    on the broker (late acks), so a worker killed during the backoff loses nothing, and only one
    attempt runs at a time (the next one is not due before this one returned)."""
    policy = spec.retry or RetryPolicy(max_retries=0)
    retries = ctx.attempt - 1
    if retries >= policy.max_retries:
        log.warning("task %s (%s): no retry left after %d attempts", ctx.task_id, spec.name,
                    ctx.attempt)  # fmt: skip
        finish(store, ctx.task_id, TaskStatus.FAILED, error=_error(exc))
        raise exc
    wait = policy.delay(retries, random.uniform) if countdown is None else max(0.0, countdown)
    # A worker holds a retry's message un-acked until it is due; past the visibility timeout
    # Redis would hand it to a second worker (celery#2599), so the wait stays below it.
    longest = max(0.0, visibility_timeout(settings) - settings.time_limit)
    if wait > longest:
        log.warning("task %s: retry in %.0fs capped to %.0fs (visibility timeout)", ctx.task_id,
                    wait, longest)  # fmt: skip
        wait = longest
    due = time.time() + wait
    # The next attempt's message goes out first, then the record says RETRYING. A worker killed
    # after both: this delivery comes back, sees the record at the next attempt and skips
    # (``_wait_for_live_run``). Killed in between (a few ms): this attempt runs again and asks
    # for its retry again; of the two next-attempt messages the later finds the task ended and
    # does nothing. Either way no attempt is lost and none runs beside another.
    try:
        signal = task.retry(
            countdown=wait,
            max_retries=policy.max_retries,
            exc=exc if isinstance(exc, Exception) else None,
            throw=False,
        )
    except Reject:
        # The next attempt's message could not be published: this one fails for good rather
        # than stay RUNNING with no message.
        finish(store, ctx.task_id, TaskStatus.FAILED, error=_error(exc))
        raise
    moved = retrying(
        lambda: store.transition(
            ctx.task_id,
            "status",
            status=TaskStatus.RETRYING,
            percent=0.0,
            only_if=(TaskStatus.RUNNING,),
            fields={
                "attempt": ctx.attempt + 1,
                "next_attempt_at": due,
                "error": _error(exc),
                "progress": {
                    "percent": 0.0,
                    "message": f"retrying in {wait:.1f}s (attempt {ctx.attempt + 1} of "
                    f"{policy.max_retries + 1})",
                    "data": {},
                },
                # The worker-lost count is per attempt: a retry is not a lost run.
                "_attempt": 0,
            },
        ),
        f"recording the retry of {ctx.task_id}",
    )
    if not moved.applied:
        # Cancelled (or ended) meanwhile: the retry's message finds the record terminal and
        # does not run.
        return None
    log.info("task %s (%s) failed (%s); attempt %d in %.1fs", ctx.task_id, spec.name,
             type(exc).__name__, ctx.attempt + 1, wait)  # fmt: skip
    raise signal


def hard_time_limit_error(limit: object) -> dict[str, str]:
    return {"type": "TimeLimitExceeded", "message": f"hard time limit ({limit}s) exceeded"}
