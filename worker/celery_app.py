"""The Celery app of the workers, beat and Flower: ``celery -A worker worker|beat|flower``.

Its configuration comes from ``shared.celery_config`` (the gateway's remote control reads the
same); this module binds the tasks to it: every registered task, the maintenance tasks, the
webhook delivery, and the signal handlers that record how a task ended when the task itself
could not. docs/RELIABILITY.md says which promise rests on which setting.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from typing import Any

from celery import Celery
from celery.exceptions import TimeLimitExceeded
from celery.schedules import crontab
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    task_failure,
    task_postrun,
    task_prerun,
    task_revoked,
    task_unknown,
    worker_init,
    worker_process_shutdown,
)
from redis.exceptions import RedisError

from shared import logs, tracing
from shared.beat import BeatEntry, unknown_names
from shared.celery_config import DEFAULT_QUEUE, celery_config, task_routes
from shared.errors import ConfigError
from shared.headers import TRACE_HEADER
from shared.records import SyncRecords
from shared.registry import UNREGISTERED, all_tasks, check_time_limits, load_task_modules
from shared.settings import Settings
from shared.status import TaskStatus
from worker.adopt import adopt, header, owner_of
from worker.maintenance import SWEEP_TASK, register_maintenance
from worker.metrics import metrics
from worker.metrics import serve as serve_metrics
from worker.runner import finish, hard_time_limit_error, register_celery_task
from worker.store import RecordsPerProcess
from worker.webhooks import WEBHOOK_QUEUE, WEBHOOK_TASK, register_webhooks
from worker.workflow import settle_revoked

log = logging.getLogger("taskgate.worker")

# Terminal writes from the worker's main process (signal handlers) retry only this long: its
# event loop serves every pool process.
MAIN_PROCESS_RETRY_S = 5.0


def make_celery(settings: Settings) -> Celery:
    """Build the Celery app for ``settings`` and bind every registered task to it."""
    app = Celery("taskgate", set_as_current=False)
    app.conf.update(celery_config(settings))
    load_task_modules(settings.task_modules)
    check_time_limits(settings.visibility_timeout)
    records = RecordsPerProcess(settings)
    for spec in all_tasks().values():
        register_celery_task(app, spec, records)
    register_maintenance(app, records)
    register_webhooks(app, records, settings)
    own = {spec.name: spec.queue for spec in all_tasks().values()}
    app.conf.task_routes = task_routes(
        settings, {**own, SWEEP_TASK: DEFAULT_QUEUE, WEBHOOK_TASK: WEBHOOK_QUEUE}
    )
    unknown = unknown_names(settings.beat_schedule, set(app.tasks))
    if unknown:
        raise ConfigError(f"TASKGATE_BEAT_SCHEDULE: no task named {unknown[0]!r} is registered")
    schedule: dict[str, Any] = {}
    for entry in settings.beat_schedule:
        label = entry.label + (f" {entry.input}" if entry.input else "")
        if label in schedule:
            raise ConfigError(f"TASKGATE_BEAT_SCHEDULE: {label!r} is listed twice")
        try:
            schedule[label] = beat_entry(entry)
        except ValueError as exc:
            raise ConfigError(f"TASKGATE_BEAT_SCHEDULE: {entry.label}: {exc}") from None
    app.conf.beat_schedule = schedule

    @worker_init.connect(weak=False)  # type: ignore[untyped-decorator]
    def _serve_metrics(**_: Any) -> None:
        # In the main process, before the pool forks (worker.metrics): a port that cannot be
        # had stops the worker here, loudly.
        serve_metrics(settings)

    @task_revoked.connect(weak=False)  # type: ignore[untyped-decorator]
    def _on_revoked(
        request: Any = None, terminated: bool = False, expired: bool = False, **_: Any
    ) -> None:
        task_id = getattr(request, "id", None)
        if not task_id:
            return
        # The workflow steps after it first: settle_revoked reads whether this task completed
        # or runs elsewhere, which the end written below would hide.
        try:
            settle_revoked(request, records.get(), terminated=terminated, expired=expired)
        except RedisError:
            log.exception("could not settle the workflow of revoked task %s", task_id)
        if expired:
            # A message whose ``expires`` passed before a worker took it ends Expired, unless
            # its task is running elsewhere (a redelivered copy): then that run decides.
            try:
                records.get().transition(
                    task_id,
                    "status",
                    status=TaskStatus.CANCELLED,
                    only_if=(TaskStatus.PENDING, TaskStatus.RETRYING),
                    fields={
                        "finished_at": time.time(),
                        "error": {"type": "Expired", "message": "expired before it started"},
                    },
                )
            except RedisError:
                log.exception("could not record the expiry of %s", task_id)
            return
        finish(records.get(), task_id, TaskStatus.CANCELLED, retry_s=MAIN_PROCESS_RETRY_S)

    @task_failure.connect(weak=False)  # type: ignore[untyped-decorator]
    def _on_failure(
        sender: Any = None, task_id: str | None = None, exception: Any = None, **_: Any
    ) -> None:
        # The hard time limit kills the pool process; Celery reports it from the main process,
        # which records the end the task itself never could.
        if task_id and isinstance(exception, TimeLimitExceeded) and _ours(sender, app):
            limit = exception.args[0] if exception.args else settings.time_limit
            finish(
                records.get(),
                task_id,
                TaskStatus.TIMED_OUT,
                retry_s=MAIN_PROCESS_RETRY_S,
                error=hard_time_limit_error(limit),
            )

    @task_unknown.connect(weak=False)  # type: ignore[untyped-decorator]
    def _on_unknown(
        sender: Any = None, message: Any = None, name: Any = None, id: Any = None, **_: Any
    ) -> None:
        # Celery rejects a message for a name no worker registered: record it FAILED, so the
        # sender sees why instead of nothing (or Celery's "SUCCESS, result None").
        if getattr(sender, "app", None) is not app or not isinstance(id, str):
            return
        record_unknown(records.get(), message, str(name), id, settings)

    return app


def beat_entry(entry: BeatEntry) -> dict[str, Any]:
    """Celery's ``beat_schedule`` entry for one of ours."""
    schedule: Any = entry.every_s
    if entry.crontab is not None:
        minute, hour, day_of_month, month_of_year, day_of_week = entry.crontab
        schedule = crontab(
            minute=minute,
            hour=hour,
            day_of_month=day_of_month,
            month_of_year=month_of_year,
            day_of_week=day_of_week,
        )
    return {"task": entry.task, "schedule": schedule, "kwargs": dict(entry.input)}


def record_unknown(
    store: SyncRecords, message: Any, name: str, task_id: str, settings: Settings
) -> None:
    """End a message for an unregistered task ``FAILED`` ``UnknownTask`` in a record of its own
    (owner from its ``taskgate_user`` header, else the service user)."""
    headers = getattr(message, "headers", None) or {}
    info = getattr(message, "delivery_info", None) or {}
    queue = info.get("routing_key") or settings.queues[0]
    owner = owner_of(headers if isinstance(headers, dict) else {}, settings)
    log.error("message %s names unknown task %r; recorded FAILED for %s", task_id, name, owner)
    try:
        if adopt(store, task_id, name[:200], str(queue), owner, settings):
            metrics().adopted.labels(UNREGISTERED).inc()
        finish(
            store,
            task_id,
            TaskStatus.FAILED,
            retry_s=MAIN_PROCESS_RETRY_S,
            error={"type": "UnknownTask", "message": f"no task named {name[:200]!r} is registered"},
        )
    except RedisError:
        log.exception("could not record unknown task %s", task_id)


def _ours(sender: Any, app: Celery) -> bool:
    return sender is None or getattr(sender, "app", app) is app


def _survive_broker_restart() -> None:
    """Work around a kombu Redis bug that makes a worker exit when Redis restarts.

    After a lost connection, kombu 5.7 still uses the old channel (to hand back un-acked
    messages when it closes, or to ack a task that finished meanwhile); the channel's
    connection is gone, and building a client fails with ``AttributeError: 'NoneType' object
    has no attribute 'hostname'`` (kombu issues #582, #970: the same failure in other
    versions), which Celery treats as "Unrecoverable error" and stops the worker. Raising the
    connection error it really is lets Celery handle it as one: it logs, reconnects and goes
    on. Nothing is lost: a message not handed back or not acked stays in Redis's un-acked set
    and returns after the visibility timeout; its task's record then says whether to run it.
    """
    from kombu.transport import redis as kombu_redis
    from redis.exceptions import ConnectionError as RedisConnectionError

    channel = kombu_redis.Channel
    if getattr(channel, "_taskgate_patched", False):
        return
    original: Any = channel._connparams

    def _connparams(self: Any, asynchronous: bool = False) -> Any:
        if self.connection is None or self.connection.client is None:
            raise RedisConnectionError("this channel's broker connection is closed")
        return original(self, asynchronous=asynchronous)

    setattr(channel, "_connparams", _connparams)  # noqa: B010
    setattr(channel, "_taskgate_patched", True)  # noqa: B010


def observe(settings: Settings) -> None:
    """Logs in ``TASKGATE_LOG_FORMAT`` and spans when configured (``shared.tracing``).

    Celery sets up the worker's logging itself (and again in each pool process): with ``json``
    its handlers get ``shared.logs``' formatter once it has (``after_setup_logger``,
    ``after_setup_task_logger``). Each task's lines name it and its trace from its start to its
    end (``task_prerun``/``task_postrun``; the runner adds the record's trace and the owner)."""
    logs.setup(settings.log_level, settings.log_format)
    if settings.log_format == "json":

        @after_setup_logger.connect(weak=False)  # type: ignore[untyped-decorator]
        @after_setup_task_logger.connect(weak=False)  # type: ignore[untyped-decorator]
        def _json_lines(logger: logging.Logger | None = None, **_: Any) -> None:
            if logger is not None:
                logs.use_json(logger)

    @task_prerun.connect(weak=False)  # type: ignore[untyped-decorator]
    def _bind_task(task_id: str | None = None, task: Any = None, **_: Any) -> None:
        traceparent = header(getattr(task, "request", None), TRACE_HEADER)
        logs.replace_bound(task_id=task_id, trace_id=tracing.trace_id_of(traceparent))

    @task_postrun.connect(weak=False)  # type: ignore[untyped-decorator]
    def _unbind_task(**_: Any) -> None:
        logs.replace_bound()

    if tracing.configure("taskgate-worker"):

        @worker_process_shutdown.connect(weak=False)  # type: ignore[untyped-decorator]
        def _flush_spans(**_: Any) -> None:
            tracing.flush()


@functools.cache
def default_app() -> Celery:
    """The app ``celery -A worker`` finds: settings from the environment, checked once."""
    try:
        settings = Settings.from_env()
        settings.require_redis()
    except ConfigError as exc:
        sys.stderr.write(f"taskgate: {exc}\n")
        raise SystemExit(2) from None
    observe(settings)
    if not settings.broker_is_amqp:
        _survive_broker_restart()
    try:
        return make_celery(settings)
    except ConfigError as exc:  # a task module's limits, a beat entry naming no task
        sys.stderr.write(f"taskgate: {exc}\n")
        raise SystemExit(2) from None
