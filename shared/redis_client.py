"""Redis clients made one way everywhere.

redis-py looks up its own version in package metadata (a walk of ``sys.path``, blocking file
I/O) each time it opens a connection, unless it is told the version. It is looked up once here,
at import, so no connection made on the event loop touches the disk.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.driver_info import DriverInfo
from redis.utils import get_lib_version

_DRIVER = DriverInfo(name="redis-py", lib_version=get_lib_version())  # type: ignore[no-untyped-call]


def async_client(url: str, **kwargs: Any) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, driver_info=_DRIVER, **kwargs)


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
