"""Redis clients made one way everywhere.

redis-py looks up its own version in package metadata (a walk of ``sys.path``, blocking file
I/O) each time it opens a connection, unless it is told the version. It is looked up once here,
at import, so no connection made on the event loop touches the disk.
"""

from __future__ import annotations

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
