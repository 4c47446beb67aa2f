"""The Celery app: JSON only, late acks, prefetch 1, queues ``fast`` and ``heavy``.

Every Celery setting taskgate relies on is set here, so the workers, beat, Flower and the
gateway (which only publishes and revokes) read the same configuration. docs/RELIABILITY.md
says which promise rests on which setting.
"""

from __future__ import annotations

import functools
import math
import sys
from typing import Any

from celery import Celery
from celery.exceptions import TimeLimitExceeded
from celery.signals import task_failure, task_revoked
from kombu import Queue  # type: ignore[attr-defined]

from shared.errors import ConfigError
from shared.logging import setup_logging
from shared.registry import all_tasks, load_task_modules
from shared.settings import Settings
from shared.status import TaskStatus
from worker.maintenance import register_maintenance
from worker.runner import RecordsPerProcess, finish, hard_time_limit_error, register_celery_task
from worker.webhooks import register_webhooks

# Terminal writes from the worker's main process (signal handlers) retry only this long: its
# event loop serves every pool process.
MAIN_PROCESS_RETRY_S = 5.0
# kombu's Redis transport consumes priority keys in this order; 10 steps give 0-9 their own list.
REDIS_PRIORITY_STEPS = list(range(10))


def visibility_timeout(settings: Settings) -> int:
    """Seconds an un-acked message stays with its worker before Redis hands it to another.

    With late acks a message stays un-acked while its task runs, so this must exceed the hard
    time limit (``Settings.from_env`` refuses otherwise), or a task still running would be
    delivered twice. It is also how long a task of a worker killed with SIGKILL waits before
    it is run again. Celery documents it as an int.
    """
    return max(1, math.ceil(settings.visibility_timeout))


def restore_interval(settings: Settings) -> int:
    """How often a worker looks for messages whose visibility timeout passed."""
    return max(1, min(10, visibility_timeout(settings) // 4))


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    if settings.broker_is_amqp:
        return {"confirm_publish": True}
    return {
        "global_keyprefix": settings.keys.broker_prefix,
        "visibility_timeout": visibility_timeout(settings),
        # kombu sweeps every interval * throttle seconds (10 * 10 by default); with a throttle
        # of 1 a lost message is back in its queue within visibility_timeout + interval.
        "unacked_restore_interval": restore_interval(settings),
        "unacked_restore_throttle": 1,
        # The sweep holds a lock in Redis; a worker killed while holding it blocks every other
        # worker's sweep until the lock expires (300 s by default).
        "unacked_mutex_expire": min(300, visibility_timeout(settings)),
        "priority_steps": REDIS_PRIORITY_STEPS,
        "queue_order_strategy": "priority",
    }


def make_celery(settings: Settings) -> Celery:
    """Build the Celery app for ``settings`` and bind every registered task to it."""
    app = Celery("taskgate", set_as_current=False)
    app.conf.update(
        broker_url=settings.effective_broker_url,
        result_backend=settings.effective_backend_url,
        broker_transport_options=broker_transport_options(settings),
        result_backend_transport_options={
            "global_keyprefix": settings.keys.broker_prefix,
            "visibility_timeout": visibility_timeout(settings),
        },
        # Celery's docs ask for the same visibility timeout in all three places.
        visibility_timeout=visibility_timeout(settings),
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=settings.prefetch_multiplier,
        worker_concurrency=settings.worker_concurrency,
        task_soft_time_limit=settings.soft_time_limit,
        task_time_limit=settings.time_limit,
        task_queues=[
            Queue(  # type: ignore[no-untyped-call]
                name, routing_key=name, queue_arguments={"x-max-priority": 10}
            )
            for name in settings.queues
        ],
        task_routes=[{pattern: {"queue": queue}} for pattern, queue in settings.routes],
        task_default_queue="fast",
        task_queue_max_priority=10,
        task_default_priority=0,
        result_expires=settings.retention_s,
        worker_send_task_events=True,
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    load_task_modules(settings.task_modules)
    records = RecordsPerProcess(settings)
    for spec in all_tasks().values():
        register_celery_task(app, spec, records)
    register_maintenance(app, records)
    register_webhooks(app, records, settings)
    app.conf.beat_schedule = {
        f"{task} every {every:g}s": {"task": task, "schedule": every}
        for task, every in settings.beat_schedule
    }

    @task_revoked.connect(weak=False)  # type: ignore[untyped-decorator]
    def _on_revoked(request: Any = None, **_: Any) -> None:
        task_id = getattr(request, "id", None)
        if task_id:
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

    return app


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


@functools.cache
def default_app() -> Celery:
    """The app ``celery -A worker`` finds: settings from the environment, checked once."""
    try:
        settings = Settings.from_env()
        settings.require_redis()
    except ConfigError as exc:
        sys.stderr.write(f"taskgate: {exc}\n")
        raise SystemExit(2) from None
    setup_logging(settings.log_level)
    if not settings.broker_is_amqp:
        _survive_broker_restart()
    return make_celery(settings)
