"""Redis clients made one way everywhere.

The gateway's clients wait for a pooled connection instead of failing: a ``BlockingConnectionPool``
of ``TASKGATE_REDIS_POOL_SIZE`` connections, where a caller past the pool's size waits up to
``TASKGATE_REDIS_POOL_TIMEOUT_S`` (then redis-py raises ``ConnectionError``, which
``shared.store_errors`` turns into a 503 with ``Retry-After``). Idle connections are checked
before reuse (``health_check_interval``) and a command that fails on a broken connection is
retried once on a fresh one, so a Redis restart costs at most the requests in flight (a command
that timed out is not retried: Redis may have run it).

redis-py looks up its own version in package metadata (a walk of ``sys.path``, blocking file
I/O) each time it opens a connection, unless it is told the version. It is looked up once here,
at import, so no connection made on the event loop touches the disk.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff
from redis.driver_info import DriverInfo
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.utils import get_lib_version

_DRIVER = DriverInfo(name="redis-py", lib_version=get_lib_version())  # type: ignore[no-untyped-call]


DEFAULT_POOL_SIZE = 100
DEFAULT_POOL_TIMEOUT_S = 5.0
# An idle connection older than this is PINGed before reuse (a restart leaves them broken).
HEALTH_CHECK_S = 5.0


def _retry_once() -> AsyncRetry:
    return AsyncRetry(ExponentialWithJitterBackoff(base=0.01, cap=0.2), retries=1)


def async_client(
    url: str,
    *,
    pool_size: int = DEFAULT_POOL_SIZE,
    pool_timeout: float = DEFAULT_POOL_TIMEOUT_S,
    **kwargs: Any,
) -> aioredis.Redis:
    """A client on a blocking pool: at most ``pool_size`` connections, callers beyond them wait
    up to ``pool_timeout`` seconds; health-checked, one retry on a connection error."""
    kwargs.setdefault("health_check_interval", HEALTH_CHECK_S)
    kwargs.setdefault("retry", _retry_once())
    # Only a connection that failed is retried: after a timeout Redis may have run the command
    # (a script, a SET NX, a push), and running it again is not safe.
    kwargs.setdefault("retry_on_error", [RedisConnectionError])
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=pool_size, timeout=pool_timeout, driver_info=_DRIVER, **kwargs
    )
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes both


def sync_client(url: str, **kwargs: Any) -> redis.Redis:
    return redis.Redis.from_url(url, driver_info=_DRIVER, **kwargs)


def raise_if_cancel_swallowed() -> None:
    """Honour a cancel that redis-py swallowed.

    A cancel that lands while redis-py opens a connection can be caught inside it: the task stays
    marked as cancelling but carries on, and a background loop would then never stop (an app's
    shutdown waits forever). Long-running loops call this after their Redis calls.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
