"""The gateway's resources, each opened and closed in one place.

Both composition roots build from these: the server (``gateway.app``, one ``cleanup_ctx`` per
resource) and the in-process API (``gateway.inprocess``, one ``AsyncExitStack``). Each is an
async context manager that closes what it opened, so a failure half way through start-up
unwinds only what was already open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from gateway.broker.factory import make_broker
from gateway.broker.outbox import OutboxBroker, watch_outbox
from gateway.broker.redis_broker import Broker, RedisBroker
from gateway.broker.sent_events import announcing, open_sent_events
from gateway.live.relay import Relay
from gateway.live.router import UpdateRouter
from gateway.tasks.control import CeleryControl
from gateway.tasks.delayed import watch_delayed
from gateway.tasks.service import TaskService
from gateway.tasks.stalls import watch_stalls
from shared.errors import ConfigError
from shared.records import AsyncRecords
from shared.redis_client import async_client, cluster_enabled
from shared.settings import Settings
from shared.store_errors import STORE_FAILURES

STORE_TIMEOUT_S = 3.0
log = logging.getLogger(__name__)


async def refuse_cluster(client: Any, variable: str) -> None:
    """Fail the start with a ``ConfigError`` naming ``variable`` if its server is a Redis
    Cluster node: every submit would fail (MOVED, CROSSSLOT) while PING answers. A Redis that
    is down now is not refused (it may come back; ``/readyz`` checks again every time)."""
    try:
        cluster = await cluster_enabled(client)
    except STORE_FAILURES as exc:
        log.warning("%s: not reachable at start (%s); will retry on use", variable, exc)
        return
    if cluster:
        raise ConfigError(
            f"{variable}: the server is a Redis Cluster node (cluster_enabled:1), which "
            "taskgate does not support (its scripts use keys of many slots); "
            "use one Redis, or Sentinel (redis+sentinel://...)"
        )


@contextlib.asynccontextmanager
async def open_records(settings: Settings) -> AsyncIterator[AsyncRecords]:
    """The records store on ``TASKGATE_REDIS_URL``."""
    client = async_client(
        settings.require_redis(),
        pool_size=settings.redis_pool_size,
        pool_timeout=settings.redis_pool_timeout_s,
        socket_timeout=STORE_TIMEOUT_S,
        socket_connect_timeout=STORE_TIMEOUT_S,
    )
    try:
        await refuse_cluster(client, "TASKGATE_REDIS_URL")
        yield AsyncRecords(client, settings.keys, settings.retention_s)
    finally:
        await client.aclose()


def with_outbox(settings: Settings, broker: Broker) -> Broker:
    """The broker wrapped in the outbox when it is kombu's Redis transport on the records'
    Redis: then messages it loses in flight are brought back (``gateway.broker.outbox``)."""
    if isinstance(broker, RedisBroker) and settings.effective_broker_url == settings.redis_url:
        return OutboxBroker(broker, settings.keys)
    return broker


@contextlib.asynccontextmanager
async def open_broker(settings: Settings, broker: Broker | None = None) -> AsyncIterator[Broker]:
    """The broker of ``CELERY_BROKER_URL`` (or ``broker``, for benchmarks and tests),
    announcing what it publishes as Celery ``task-sent`` events when those are on."""
    async with open_sent_events(settings) as events:
        made = broker or make_broker(settings)
        the_broker = announcing(with_outbox(settings, made), events)
        try:
            if isinstance(made, RedisBroker):
                await refuse_cluster(made.client, "CELERY_BROKER_URL")
            yield the_broker
        finally:
            await the_broker.close()


@contextlib.asynccontextmanager
async def open_service(
    settings: Settings, records: AsyncRecords, broker: Broker
) -> AsyncIterator[TaskService]:
    service = TaskService(settings, records, broker, control=CeleryControl(settings))
    try:
        yield service
    finally:
        await service.close()


def make_relay(settings: Settings, router: UpdateRouter) -> Relay:
    """The relay of the progress channel, handing every update to ``router``."""
    return Relay(
        settings.require_redis(),
        settings.keys.progress_channel,
        router.deliver,
        router.resync,
        listening=router.listening,
    )


@contextlib.asynccontextmanager
async def running(*jobs: tuple[str, Coroutine[Any, Any, None]]) -> AsyncIterator[None]:
    """Background jobs ``(name, coroutine)``, cancelled and awaited on exit."""
    tasks = [asyncio.create_task(coro, name=name) for name, coro in jobs]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def maintenance_jobs(
    settings: Settings, records: AsyncRecords, broker: Broker
) -> list[tuple[str, Coroutine[Any, Any, None]]]:
    """The stall watch, the delayed tasks' mover and, with the outbox, its sweep."""
    jobs: list[tuple[str, Coroutine[Any, Any, None]]] = [
        ("taskgate-stalls", watch_stalls(records, settings.task_heartbeat_s)),
        ("taskgate-delayed", watch_delayed(records.client, settings.keys, records, broker)),
    ]
    if isinstance(broker, OutboxBroker):
        sweep = max(1.0, min(10.0, settings.visibility_timeout / 4))
        jobs.append(("taskgate-outbox", watch_outbox(broker, settings.queues, sweep)))
    return jobs
