"""Fixtures of the store tests: a blocking client of the session's redis-server, and a key
prefix of each test's own (its keys deleted afterwards)."""

from __future__ import annotations

from collections.abc import Iterator
from uuid import uuid4

import pytest
import redis

from shared.keys import Keys
from shared.redis_client import sync_client
from tests.support import RedisServer


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    c = sync_client(redis_server.url)
    yield c
    c.close()


@pytest.fixture
def keys(client: redis.Redis) -> Iterator[Keys]:
    k = Keys(prefix=f"t-{uuid4().hex[:8]}:")
    yield k
    for name in client.scan_iter(match=f"{k.prefix}*"):
        client.delete(name)
