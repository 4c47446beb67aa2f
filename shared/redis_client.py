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

A sentinel URL (``redis+sentinel://``, ``shared.sentinel``) gives a client of redis-py's public
Sentinel API (``Sentinel(...).master_for(...)``): each new connection asks the sentinels for
the master, so a client follows a failover. The gateway's pool is a blocking one there too.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis
import redis.asyncio as aioredis
import redis.sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelPool
from redis.backoff import ExponentialWithJitterBackoff
from redis.driver_info import DriverInfo
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.utils import get_lib_version

from shared.pool_metrics import POOL
from shared.sentinel import is_sentinel_url, parse_sentinel_url

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
    if is_sentinel_url(url):
        return _async_sentinel_client(url, pool_size, pool_timeout, kwargs)
    pool = _TimedBlockingPool.from_url(
        url, max_connections=pool_size, timeout=pool_timeout, driver_info=_DRIVER, **kwargs
    )
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes both


def sync_client(url: str, **kwargs: Any) -> redis.Redis:
    """A client of ``url``; on a sentinel URL, of its master wherever it is now."""
    if is_sentinel_url(url):
        config = parse_sentinel_url(url)
        socket = {k: v for k, v in kwargs.items() if k.startswith("socket_")}
        manager = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            list(config.sentinels),
            sentinel_kwargs=config.sentinel_kwargs(driver_info=_DRIVER, **socket),
            driver_info=_DRIVER,
            **config.master_kwargs(),
            **kwargs,
        )
        client: redis.Redis = manager.master_for(  # type: ignore[no-untyped-call]
            config.master, redis_class=redis.Redis
        )
        return client
    return redis.Redis.from_url(url, driver_info=_DRIVER, **kwargs)


# A connection handed over within this is not counted as a wait (the lock and the checkout).
WAIT_THRESHOLD_S = 0.001
_NO_CONNECTION = "No connection available."


class _Timed:
    """Counts the waits for a pooled connection, and those that gave up
    (``shared.pool_metrics.POOL``), around the public ``get_connection``."""

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            connection = await super().get_connection(*args, **kwargs)  # type: ignore[misc]
        except RedisConnectionError as exc:
            if str(exc) == _NO_CONNECTION:
                POOL.gave_up(time.perf_counter() - started)
            raise
        waited = time.perf_counter() - started
        if waited > WAIT_THRESHOLD_S:
            POOL.waited(waited)
        return connection


class _TimedBlockingPool(_Timed, aioredis.BlockingConnectionPool):
    """The gateway's pool: waits for a free connection, and counts the waits."""


class _BlockingSentinelPool(_Timed, AsyncSentinelPool, aioredis.BlockingConnectionPool):
    """redis-py's sentinel pool (connects to the master the sentinels name) that waits for a
    free connection, as ``BlockingConnectionPool`` does, instead of failing at once."""


class _SentinelRedis(aioredis.Redis):
    """The master's client; closing it closes its connections to the sentinels too."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        pool = self.connection_pool
        await super().aclose(close_connection_pool)
        manager = getattr(pool, "sentinel_manager", None)
        if isinstance(manager, AsyncSentinel):
            await manager.aclose()


def _async_sentinel_client(
    url: str, pool_size: int, pool_timeout: float, kwargs: dict[str, Any]
) -> aioredis.Redis:
    config = parse_sentinel_url(url)
    socket = {k: v for k, v in kwargs.items() if k.startswith("socket_")}
    manager = AsyncSentinel(  # type: ignore[no-untyped-call]
        list(config.sentinels),
        sentinel_kwargs=config.sentinel_kwargs(driver_info=_DRIVER, **socket),
        driver_info=_DRIVER,
        **config.master_kwargs(),
        **kwargs,
    )
    client: aioredis.Redis = manager.master_for(
        config.master,
        redis_class=_SentinelRedis,
        connection_pool_class=_BlockingSentinelPool,
        max_connections=pool_size,
        timeout=pool_timeout,
    )
    return client


async def cluster_enabled(client: aioredis.Redis) -> bool:
    """Whether the server is a Redis Cluster node (``INFO cluster``: ``cluster_enabled:1``):
    taskgate's scripts touch keys of many slots, so every submit would answer MOVED or
    CROSSSLOT there. Raises what the client raises when Redis is down."""
    info = await client.info("cluster")
    return str(info.get("cluster_enabled", 0)) == "1"


async def server_problem(client: aioredis.Redis) -> str | None:
    """Why submits cannot work on the server ``client`` reaches (a Redis Cluster node, or a
    read-only replica), or None. Raises what the client raises when Redis is down."""
    if await cluster_enabled(client):
        return "a Redis Cluster node (cluster_enabled:1): use one Redis, or Sentinel"
    role = await client.execute_command("ROLE")  # type: ignore[no-untyped-call]
    name = role[0] if isinstance(role, list | tuple) and role else role
    if isinstance(name, bytes):
        name = name.decode()
    if name != "master":
        return f"a {name}, not a master: writes are refused"
    return None


def raise_if_cancel_swallowed() -> None:
    """Honour a cancel that redis-py swallowed.

    A cancel that lands while redis-py opens a connection can be caught inside it: the task stays
    marked as cancelling but carries on, and a background loop would then never stop (an app's
    shutdown waits forever). Long-running loops call this after their Redis calls.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
