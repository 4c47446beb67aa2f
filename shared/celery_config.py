"""Celery's configuration: JSON only, late acks, prefetch 1, queues ``fast`` and ``heavy``.

Every Celery setting taskgate relies on is built here from ``Settings``, once for every process
that talks to the workers' broker: the workers, beat and Flower (``worker.celery_app``) and the
gateway's remote control (``gateway.tasks.control``: revoke, inspect). They must agree: a revoke
reaches a worker only on the same broker under the same ``global_keyprefix`` (kombu prefixes the
pidbox keys a broadcast travels on too). docs/RELIABILITY.md says which promise rests on which
setting.

Neither celery nor kombu is imported when this module is: ``shared`` is imported by both sides,
and kombu's ``Queue`` objects are built only when a configuration is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from shared.sentinel import is_sentinel_url, parse_sentinel_url
from shared.settings import Settings

if TYPE_CHECKING:
    from kombu import Queue  # type: ignore[attr-defined]

# Every queue is declared with this ``x-max-priority``; RabbitMQ refuses a redeclaration with
# other arguments, so whoever declares a queue (workers, webhooks, the gateway's AMQP publisher)
# must use the same number. It is the queues' ceiling; the priorities a task may ask for are
# ``shared.priority``'s (0-9).
MAX_PRIORITY = 10
DEFAULT_QUEUE = "fast"
# kombu's Redis transport consumes priority keys in this order; 10 steps give 0-9 their own list.
REDIS_PRIORITY_STEPS = list(range(MAX_PRIORITY))


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


# Producers that are not workers (the events thread, ``shared.producer``) bound every Redis
# socket operation: a frozen broker costs a timeout, never a wait without end. (Workers keep
# kombu's blocking reads: their BRPOP waits for work by design.)
REDIS_PUBLISH_TIMEOUTS = {"socket_timeout": 3.0, "socket_connect_timeout": 3.0}


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """kombu's transport options: publisher confirms on AMQP; prefix and redelivery on Redis
    (and the master's name and the sentinels' credentials on a sentinel URL)."""
    if settings.broker_is_amqp:
        return {"confirm_publish": True}
    return {
        **_sentinel_options(settings.effective_broker_url),
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


def _sentinel_options(url: str | None) -> dict[str, Any]:
    return parse_sentinel_url(url).kombu_options() if url and is_sentinel_url(url) else {}


def _celery_url(url: str | None) -> str | None:
    """``url`` as Celery reads it: taskgate's ``redis+sentinel://`` becomes kombu's
    ``sentinel://...;sentinel://...`` (``shared.sentinel``); any other is unchanged."""
    return parse_sentinel_url(url).kombu_url() if url and is_sentinel_url(url) else url


def _sentinel_ssl(settings: Settings) -> dict[str, Any]:
    """Celery's TLS settings for the master behind a ``rediss+sentinel://`` URL."""
    out: dict[str, Any] = {}
    broker, backend = settings.effective_broker_url, settings.effective_backend_url
    if broker and is_sentinel_url(broker) and (use := parse_sentinel_url(broker).kombu_ssl()):
        out["broker_use_ssl"] = use
    if backend and is_sentinel_url(backend) and (use := parse_sentinel_url(backend).kombu_ssl()):
        out["redis_backend_use_ssl"] = use
    return out


def task_queue(name: str) -> Queue:
    """The kombu queue ``name``, declared as every taskgate queue is (see ``MAX_PRIORITY``)."""
    from kombu import Queue  # type: ignore[attr-defined]

    return Queue(  # type: ignore[no-untyped-call]
        name, routing_key=name, queue_arguments={"x-max-priority": MAX_PRIORITY}
    )


def task_routes(
    settings: Settings, own: Mapping[str, str] | None = None
) -> list[dict[str, dict[str, str]]]:
    """Celery's ``task_routes``: the deployment's ``TASKGATE_ROUTES`` first (first match wins,
    as the gateway applies them), then ``own``, each task's own queue by its exact name. That
    part was the ``queue`` task attribute's, which Celery deprecates for 6.0 and which beat a
    route: ``.apply_async()`` on a worker's task object ignored ``TASKGATE_ROUTES``."""
    routes: list[dict[str, dict[str, str]]] = [
        {pattern: {"queue": queue}} for pattern, queue in settings.routes
    ]
    if own:
        routes.append({name: {"queue": queue} for name, queue in own.items()})
    return routes


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery's configuration mapping for ``settings`` (for ``app.conf.update``)."""
    return {
        "broker_url": _celery_url(settings.effective_broker_url),
        "result_backend": _celery_url(settings.effective_backend_url),
        **_sentinel_ssl(settings),
        "broker_transport_options": broker_transport_options(settings),
        "result_backend_transport_options": {
            **_sentinel_options(settings.effective_backend_url),
            "global_keyprefix": settings.keys.broker_prefix,
            "visibility_timeout": visibility_timeout(settings),
        },
        # Celery's docs ask for the same visibility timeout in all three places.
        "visibility_timeout": visibility_timeout(settings),
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": settings.prefetch_multiplier,
        "worker_concurrency": settings.worker_concurrency,
        "task_soft_time_limit": settings.soft_time_limit,
        "task_time_limit": settings.time_limit,
        "task_queues": [task_queue(name) for name in settings.queues],
        "task_routes": task_routes(settings),
        "task_default_queue": DEFAULT_QUEUE,
        "task_queue_max_priority": MAX_PRIORITY,
        "task_default_priority": 0,
        "result_expires": settings.retention_s,
        "worker_send_task_events": True,
        # Producers using Celery's own API (send_task, .delay()) announce what they send, so
        # Flower shows it as sent; the gateway does the same for its own publishes
        # (gateway.broker.sent_events). CELERY_TASK_SEND_SENT_EVENT turns both off.
        "task_send_sent_event": settings.task_send_sent_event,
        "worker_max_tasks_per_child": settings.max_tasks_per_child,
        "worker_max_memory_per_child": settings.max_memory_per_child_kib,
        "worker_hijack_root_logger": False,
        "enable_utc": True,
    }
