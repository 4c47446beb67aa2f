"""The Celery app: JSON only, late acks, prefetch 1, queues ``fast`` and ``heavy``.

Every Celery setting taskgate relies on is set here, so the workers, beat, Flower and the
gateway (which only publishes and revokes) read the same configuration.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

from celery import Celery
from celery.signals import task_revoked
from kombu import Queue  # type: ignore[attr-defined]

from shared.errors import ConfigError
from shared.logging import setup_logging
from shared.registry import all_tasks, load_task_modules
from shared.settings import Settings
from shared.status import TaskStatus
from worker.runner import RecordsPerProcess, finish, register_celery_task

# kombu's Redis transport consumes priority keys in this order; 10 steps give 0-9 their own list.
REDIS_PRIORITY_STEPS = list(range(10))
# A message un-acked for this long is handed to another worker. With late acks it must exceed the
# hard time limit, or a task still running would be delivered twice.
VISIBILITY_MARGIN_S = 60.0


def visibility_timeout(settings: Settings) -> float:
    return settings.time_limit + VISIBILITY_MARGIN_S


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    if settings.broker_is_amqp:
        return {"confirm_publish": True}
    return {
        "global_keyprefix": settings.keys.broker_prefix,
        "visibility_timeout": visibility_timeout(settings),
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
        result_backend_transport_options={"global_keyprefix": settings.keys.broker_prefix},
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

    @task_revoked.connect(weak=False)  # type: ignore[untyped-decorator]
    def _on_revoked(request: Any = None, **_: Any) -> None:
        task_id = getattr(request, "id", None)
        if task_id:
            finish(records.get(), task_id, TaskStatus.CANCELLED)

    return app


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
    return make_celery(settings)
