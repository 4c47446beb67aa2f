"""Runs one registered task inside a Celery task, turning its life into record transitions.

What each run does, in order (docs/RELIABILITY.md explains why):

1. validates the input again (the broker is not trusted either);
2. moves the record to RUNNING and counts the run (``_attempt``), in one script run
   (``StartGuard``), unless the task already ended (a cancelled task never runs, however often
   its message is delivered), this delivery's attempt was already retried, another run of it is
   alive (then it waits), or its earlier runs all killed their worker process
   (``TASKGATE_MAX_ATTEMPTS`` of them: it ends FAILED instead of running again);
3. has the process's heartbeat thread (``worker.heartbeat``) stamp the record every
   ``TASKGATE_TASK_HEARTBEAT_S`` seconds while the run lasts;
4. runs the function and records exactly one terminal status (a cancel asked while it ran wins
   over its result, in the same script run). Terminal writes are retried through short Redis
   outages; progress updates are dropped during one (the record keeps the truth, the next
   update or the relay's resync repairs the view).

A delivery that does not run (another run did or does the work, or the record is gone or has
ended) raises Celery's ``Ignore``: the message is acked, no result is stored, and no chain or
chord goes on from it (the run that did the work, or ``settle_workflow``, decides what follows).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from celery import Celery, Task
from celery.exceptions import Ignore, Reject, SoftTimeLimitExceeded
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.celery_config import visibility_timeout
from shared.current_task import running
from shared.errors import InvalidInput, RetryRequested, TaskCancelled
from shared.records import (
    CeleryMeta,
    StartGuard,
    SyncRecords,
    TransitionCode,
    TransitionResult,
)
from shared.registry import RetryPolicy, TaskSpec
from shared.send_options import PARENT_HEADER
from shared.settings import Settings
from shared.status import TaskStatus
from worker import celery_result, webhooks
from worker.adopt import RECORDED_HEADER, adopt, header, owner_of, queue_of
from worker.context import Context
from worker.engines import invoke
from worker.heartbeat import HEARTBEATS
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
    cancel_wins: bool = False,
    celery_meta: CeleryMeta | None = None,
    **fields: Any,
) -> TransitionResult:
    """Record the terminal status (a no-op if the task already ended); what it did.

    Retried through a Redis outage for ``retry_s`` seconds (less in the worker's main process,
    whose event loop must not stall). ``cancel_wins`` (COMPLETED only): if a cancel was asked,
    the task ends CANCELLED instead (``TransitionCode.CANCELLED_INSTEAD``). ``celery_meta``
    (COMPLETED only): Celery's own result, written in the same script run
    (``worker.celery_result``).
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
            cancel_wins=cancel_wins,
            celery_meta=celery_meta,
            fields=finished,
        ),
        f"recording {status.value} for {task_id}",
        retry_s,
    )
    if result.applied:
        webhooks.after_terminal(records, task_id, result.snapshot)
    return result


class ResultTooLarge(Exception):
    """A task's result is larger than ``TASKGATE_MAX_RESULT_BYTES``."""


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
        shared=False,  # this app's alone (its closure holds this app's records)
        bind=True,  # its queue: a route (worker.celery_app, shared.celery_config.task_routes)
        # Messages sent with Celery's own API carry no timelimit: the task's own apply. The
        # gateway's carry no soft limit for a task with only a hard one: this one applies.
        soft_time_limit=spec.soft_limit_under(settings.soft_time_limit),
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
            task: Task, store: SyncRecords, task_id: str, guard: StartGuard
        ) -> tuple[TransitionResult, str | None]:
            """Move the record to RUNNING, checked and counted by ``guard``; adopt a message
            that has no record first. The start and the owner it was adopted for (else None)."""
            now = time.time()

            def start(**extra: Any) -> TransitionResult:
                return retrying(
                    lambda: store.transition(
                        task_id,
                        "status",
                        status=TaskStatus.RUNNING,
                        only_if=_NON_TERMINAL,
                        start=guard,
                        fields={
                            "started_at": now,
                            "attempt": guard.attempt,
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
        # Runs are counted as they start: a run that kills its process cannot count itself
        # afterwards, and task_reject_on_worker_lost hands its message straight back.
        guard = StartGuard(
            attempt, STALE_AFTER_BEATS * settings.task_heartbeat_s, settings.max_attempts
        )
        waited = False
        while True:
            started, owner = begin(self, store, task_id, guard)
            if started.code == TransitionCode.RETRIED:
                # This delivery's attempt already ended in a retry (its ack was lost with its
                # worker): the retry's own message runs the next attempt.
                log.info("task %s: attempt %d already retried; not running it again", task_id,
                         attempt)  # fmt: skip
                raise Ignore()
            if started.code == TransitionCode.WORKER_LOST:
                runs = int(started.detail or 0)
                log.error("task %s (%s) killed its worker %d times; failing it", task_id,
                          spec.name, runs)  # fmt: skip
                finish(store, task_id, TaskStatus.FAILED, error=_worker_lost_error(runs))
                return None
            if started.code != TransitionCode.LIVE:
                break
            # Another run of it is alive (a second delivery of the message: on a lost broker
            # connection kombu hands un-acked messages back at once). Running both would do the
            # work and its side effects twice; acking this copy would lose the task if the other
            # run then died. So this copy waits, trying the start again each heartbeat interval:
            # it starts once the other run has been silent for STALE_AFTER_BEATS beats, and ends
            # (Ignore) once that run ended the task or this attempt.
            if not waited:
                log.warning("task %s is running elsewhere (heartbeat %.1fs ago); waiting",
                            task_id, started.detail or 0.0)  # fmt: skip
            waited = True
            time.sleep(settings.task_heartbeat_s)
        if waited and started.applied:
            log.warning("task %s: its other run went silent; taking over", task_id)
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
        if not started.applied:  # no other answer is expected; never run without RUNNING
            log.error("task %s: its start was refused (%s); not running it", task_id,
                      started.code.name)  # fmt: skip
            raise Ignore()
        if started.detail is not None and started.detail > 1:
            log.warning("task %s (%s): run %d (an earlier run was lost)", task_id, spec.name,
                        int(started.detail))  # fmt: skip
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
                HEARTBEATS.beating(store, task_id, settings.task_heartbeat_s),
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
        soft_limit = spec.soft_limit_under(settings.soft_time_limit)
        # A task with only a hard limit is stopped at it, softly first (``soft_limit_under``).
        which = "time limit" if spec.soft_time_limit is None and soft_limit else "soft time limit"
        finish(
            store,
            task_id,
            TaskStatus.TIMED_OUT,
            error={
                "type": "TimeLimitExceeded",
                "message": f"{which} ({soft_limit or settings.soft_time_limit:g}s) exceeded",
            },
        )
        raise
    except Exception as exc:
        if spec.retry is not None and isinstance(exc, spec.retry.retry_for):
            return _retry_or_fail(task, spec, settings, ctx, store, exc, None)
        finish(store, task_id, TaskStatus.FAILED, error=_error(exc))
        raise
    if ctx.cancel_seen:
        finish(store, task_id, TaskStatus.CANCELLED)
        return None
    try:
        encoded = orjson.dumps(result)
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
    if len(encoded) > settings.max_result_bytes:
        # Not stored at all (nor in Celery's backend: the run raises), rather than stored cut.
        too_large = ResultTooLarge(
            f"the result is {len(encoded):,} bytes of JSON, above TASKGATE_MAX_RESULT_BYTES "
            f"({settings.max_result_bytes:,}); return less, or store it elsewhere and return "
            "where"
        )
        finish(store, task_id, TaskStatus.FAILED, error=_error(too_large))
        raise too_large
    # A cancel asked while it ran, and not seen by it, wins in the same script run; Celery's own
    # result goes in that run too where it can (worker.celery_result).
    same_redis = settings.effective_backend_url == settings.redis_url
    meta = celery_result.meta_for(task, result, same_redis=same_redis)
    done = finish(
        store,
        task_id,
        TaskStatus.COMPLETED,
        cancel_wins=True,
        celery_meta=meta,
        result=orjson.Fragment(encoded),
    )
    if done.code == TransitionCode.CANCELLED_INSTEAD:
        return None
    if meta is not None and done.applied:
        celery_result.stored(task)
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
