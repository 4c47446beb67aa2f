"""Fixtures: one real redis-server and one real Celery worker per test session; a gateway per test.

Every session uses its own key prefix (records, channels and the broker's queues), so test runs
can share a machine.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from blockbuster import blockbuster_ctx

from shared.settings import Settings
from tests.support import (
    CeleryWorker,
    RedisServer,
    SocketClient,
    base_env,
    make_token,
    serve_gateway,
    started,
)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with started(RedisServer(tmp_path_factory.mktemp("redis"))) as server:
        yield server


@pytest.fixture(scope="session")
def key_prefix() -> str:
    return f"tg-{uuid.uuid4().hex[:8]}:"


@pytest.fixture(scope="session")
def env(redis_server: RedisServer, key_prefix: str) -> dict[str, str]:
    return base_env(redis_server.url, key_prefix)


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def celery_worker(env: dict[str, str], log_dir: Path) -> Iterator[CeleryWorker]:
    with started(CeleryWorker(env, log_dir)) as worker:
        yield worker


@pytest.fixture
def settings(env: dict[str, str]) -> Settings:
    return Settings.from_env(env)


@pytest.fixture
async def gateway(
    settings: Settings,
    celery_worker: CeleryWorker,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> AsyncIterator[TestServer]:
    """A gateway on a real port, with the session's worker behind it.

    Once it is up, anything that blocks the event loop (the gateway's or the test's) fails the
    test: blockbuster turns blocking calls made on the loop into errors.
    """
    server = await serve_gateway(aiohttp_server, settings)
    with blockbuster_ctx():
        yield server


@pytest.fixture
async def http(
    gateway: TestServer, aiohttp_client: Callable[..., Awaitable[TestClient]]
) -> TestClient:
    return await aiohttp_client(gateway)


@pytest.fixture
async def sockets(gateway: TestServer) -> AsyncIterator[Callable[[str], Awaitable[SocketClient]]]:
    """Factory: a connected Socket.IO client for a user."""
    clients: list[SocketClient] = []

    async def connect(user: str) -> SocketClient:
        client = await SocketClient(str(gateway.make_url("")), make_token(user)).connect()
        clients.append(client)
        return client

    yield connect
    for client in clients:
        await client.close()
