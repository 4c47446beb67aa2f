"""Health of what the gateway depends on: the records' Redis, the broker, the relay, workers.

``readiness`` is the Redis and broker half of ``/readyz``; ``QueueWorkers`` is the other half
(every configured queue has a live worker); ``system_health`` adds the relay and the workers
that answered an inspect (the in-process ``get_system_health``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from celery import Celery
from kombu.exceptions import KombuError
from redis.exceptions import RedisError

from gateway.broker.redis_broker import Broker
from gateway.tasks.control import CeleryControl
from shared.errors import BrokerUnavailable

PING_TIMEOUT_S = 3.0
# How long a worker has to answer the ``active_queues`` broadcast: it is the worker's main
# process that answers (not its pool), on the same broker, so a live one answers in ms.
QUEUES_REPLY_TIMEOUT_S = 1.0
# The most a ``/readyz`` waits for that answer; past it the queues are "unknown" (not ready).
QUEUES_DEADLINE_S = 3.0
# One answer serves every ``/readyz`` for this long: a burst of probes is one broadcast.
QUEUES_CACHE_S = 2.0


async def readiness(client: aioredis.Redis, broker: Broker) -> dict[str, str]:
    """``{"redis": "ok" or what is wrong, "broker": ...}``."""
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(PING_TIMEOUT_S):
            await client.ping()
        checks["redis"] = "ok"
    except (RedisError, OSError, TimeoutError) as exc:
        checks["redis"] = f"unreachable: {type(exc).__name__}"
    try:
        await broker.ping()
        checks["broker"] = "ok"
    except BrokerUnavailable as exc:
        checks["broker"] = exc.message
    return checks


async def system_health(
    client: aioredis.Redis,
    broker: Broker,
    relay: str | None,
    control: CeleryControl | None,
) -> dict[str, Any]:
    """Redis, broker, relay (``relay``: its state, if one runs) and workers, each ``ok`` or
    what is wrong; ``status`` overall."""
    checks: dict[str, Any] = dict(await readiness(client, broker))
    if relay is not None:
        checks["relay"] = relay
    if control is None:
        checks["workers"] = 0
    else:
        try:
            checks["workers"] = len(await control.workers())
        except (TimeoutError, OSError) as exc:
            checks["workers"] = f"unknown: {type(exc).__name__}"
    ok = all(checks.get(k, "ok") == "ok" for k in ("redis", "broker", "relay"))
    return {"status": "ok" if ok else "degraded", **checks}


@dataclass(frozen=True)
class QueueCheck:
    """One answer about the workers: the configured queues that no live worker consumes
    (``missing``), or why it is not known (``error``: no answer in time, broker error)."""

    at: float
    missing: tuple[str, ...] = ()
    error: str | None = None
    workers: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None and not self.missing

    def describe(self) -> dict[str, Any]:
        """The ``/readyz`` entries: ``workers`` (``ok`` or what is wrong) and, when known,
        ``queues_without_workers``."""
        if self.error is not None:
            return {"workers": f"unknown: {self.error}"}
        workers = f"no live worker for {', '.join(self.missing)}" if self.missing else "ok"
        return {"workers": workers, "queues_without_workers": list(self.missing)}


class QueueWorkers:
    """Whether every queue of ``queues`` has a live worker, as the workers themselves say.

    Celery's ``inspect().active_queues()`` is a broadcast on the broker that each live worker
    answers with the queues it consumes; a worker that is dead, stopped or cut off from the
    broker does not answer. The broadcast is blocking in kombu, so it runs in a thread under a
    deadline, with at most one in flight (a probe that arrives meanwhile waits for the same
    answer), and each answer is kept ``cache_s`` seconds: a burst of probes costs the workers
    one broadcast.

    kombu gathers replies until none came for the reply timeout, so every broadcast would take
    that long. Once an answer found every queue served, the next asks for as many replies as
    that answer had (``limit``) and returns as soon as they are in; an answer with a queue
    missing makes the next one wait for every reply again, so a limit never hides a worker.
    """

    def __init__(
        self,
        control: CeleryControl,
        queues: Sequence[str],
        *,
        cache_s: float = QUEUES_CACHE_S,
        reply_timeout_s: float = QUEUES_REPLY_TIMEOUT_S,
        deadline_s: float = QUEUES_DEADLINE_S,
    ) -> None:
        self.control = control
        self.queues = tuple(queues)
        self.cache_s = cache_s
        self.reply_timeout_s = reply_timeout_s
        self.deadline_s = deadline_s
        self._last: QueueCheck | None = None
        self._pending: asyncio.Task[QueueCheck] | None = None

    async def check(self) -> QueueCheck:
        """The latest answer if it is fresh, else a new one (bounded by ``deadline_s``)."""
        last = self._last
        if last is not None and time.monotonic() - last.at < self.cache_s:
            return last
        if self._pending is None or self._pending.done():
            self._pending = asyncio.create_task(self._ask(), name="taskgate-readyz-queues")
        try:
            async with asyncio.timeout(self.deadline_s):
                # Shielded: a probe that gives up does not cancel the answer others wait for;
                # and while a slow broadcast is still running no second one starts.
                return await asyncio.shield(self._pending)
        except TimeoutError:
            return QueueCheck(time.monotonic(), error=f"no answer within {self.deadline_s:g}s")

    async def _ask(self) -> QueueCheck:
        last = self._last
        limit = last.workers if last is not None and last.ok and last.workers else None
        try:
            app = await self.control.app()
            replies = await asyncio.to_thread(_active_queues, app, self.reply_timeout_s, limit)
        except (KombuError, RedisError, OSError, TimeoutError) as exc:
            answer = QueueCheck(time.monotonic(), error=type(exc).__name__)
        else:
            served = {queue for names in replies.values() for queue in names}
            missing = tuple(q for q in self.queues if q not in served)
            answer = QueueCheck(time.monotonic(), missing=missing, workers=len(replies))
        self._last = answer
        return answer


def _active_queues(app: Celery, timeout: float, limit: int | None) -> dict[str, list[str]]:
    """``{worker: [queue, ...]}`` for each worker that answered (in a worker thread)."""
    # ``app.control`` is created (and celery.app.control imported) on first access: here, in
    # the thread, not on the loop.
    replies = app.control.inspect(timeout=timeout, limit=limit).active_queues() or {}
    return {
        str(worker): [str(q.get("name")) for q in queues if isinstance(q, dict)]
        for worker, queues in replies.items()
        if isinstance(queues, list)
    }
