"""Health of what the gateway depends on: the records' Redis, the broker, the relay, workers.

``readiness`` is what ``/readyz`` answers (Redis and broker reachable); ``system_health`` adds
the relay and the workers that answered an inspect (the in-process ``get_system_health``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.broker.redis_broker import Broker
from gateway.tasks.control import CeleryControl
from shared.errors import BrokerUnavailable

PING_TIMEOUT_S = 3.0


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
