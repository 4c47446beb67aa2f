"""``/readyz`` is 503 while a configured queue has no live worker, and names the queue.

The workers say it themselves: each live one answers an ``inspect().active_queues()``
broadcast on the broker (gateway/tasks/health.py, ``QueueWorkers``); one answer serves every
probe for a couple of seconds. Real workers here, on the session's redis-server.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestClient, TestServer

from gateway.tasks import health
from gateway.tasks.health import QUEUES_CACHE_S
from shared.settings import Settings
from tests.support import CeleryWorker, auth, serve_gateway

Server = Callable[..., Awaitable[TestServer]]


async def readyz(server: TestServer) -> tuple[int, dict[str, Any]]:
    async with ClientSession() as session, session.get(server.make_url("/readyz")) as resp:
        return resp.status, await resp.json()


async def until(server: TestServer, status: int, timeout: float = 30.0) -> dict[str, Any]:
    """Poll ``/readyz`` until it answers ``status``; its body."""
    async with asyncio.timeout(timeout):
        while True:
            got, body = await readyz(server)
            if got == status:
                return body
            await asyncio.sleep(0.2)


async def test_ready_when_every_queue_has_a_worker_and_healthz_unchanged(
    http: TestClient,
) -> None:
    resp = await http.get("/readyz")
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {
        "status": "ok", "redis": "ok", "broker": "ok", "workers": "ok",
        "queues_without_workers": [],
    }  # fmt: skip
    healthz = await http.get("/healthz")
    assert healthz.status == 200 and await healthz.json() == {"status": "ok"}


async def test_a_configured_queue_no_worker_serves_is_named(
    celery_worker: CeleryWorker, env: dict[str, str], aiohttp_server: Server
) -> None:
    """The session's worker serves fast and heavy; this gateway is configured with a third."""
    settings = Settings.from_env({**env, "TASKGATE_QUEUES": "fast,heavy,spare"})
    server = await serve_gateway(aiohttp_server, settings)
    gateway = await serve_gateway(aiohttp_server, Settings.from_env(env))
    status, body = await readyz(server)
    assert status == 503, body
    assert body["queues_without_workers"] == ["spare"]
    assert body["workers"] == "no live worker for spare"
    assert body["redis"] == "ok" and body["broker"] == "ok"
    # The other gateway, same workers, only the two queues they serve: ready.
    assert (await readyz(gateway))[0] == 200


async def test_503_while_heavy_has_no_worker_200_once_it_has_one(
    env: dict[str, str], log_dir: Path, aiohttp_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A key prefix of its own: the session's worker (fast and heavy) neither sees these queues
    # nor hears this gateway's broadcasts.
    own = {**env, "TASKGATE_KEY_PREFIX": f"rz-{uuid.uuid4().hex[:8]}:"}
    server = await serve_gateway(aiohttp_server, Settings.from_env(own))
    fast = await asyncio.to_thread(CeleryWorker(own, log_dir, queues="fast", concurrency=1).start)
    heavy: CeleryWorker | None = None
    try:
        body = await until(server, 503)
        # Stays 503 for as long as heavy has no worker, fast's being there is not enough.
        await asyncio.sleep(QUEUES_CACHE_S + 0.5)
        status, body = await readyz(server)
        assert status == 503, body
        assert body["queues_without_workers"] == ["heavy"]
        assert body["workers"] == "no live worker for heavy"

        heavy = await asyncio.to_thread(
            CeleryWorker(own, log_dir, queues="heavy", concurrency=1).start
        )
        body = await until(server, 200)
        assert body["queues_without_workers"] == []

        # A burst of probes costs the workers one broadcast (two if it straddles the cache's
        # expiry), not fifty.
        asked: list[float] = []
        real = health._active_queues

        def counted(*args: Any) -> dict[str, list[str]]:
            asked.append(time.monotonic())
            return real(*args)

        monkeypatch.setattr(health, "_active_queues", counted)
        await asyncio.sleep(QUEUES_CACHE_S)  # the cached answer expires: the burst must ask
        answers = await asyncio.gather(*(readyz(server) for _ in range(50)))
        assert all(status == 200 for status, _ in answers)
        assert 1 <= len(asked) <= 2, asked

        await asyncio.to_thread(heavy.stop)
        heavy = None
        body = await until(server, 503)
        assert body["queues_without_workers"] == ["heavy"]
    finally:
        for worker in (fast, heavy):
            if worker is not None:
                await asyncio.to_thread(worker.stop)


async def test_readyz_is_503_on_a_replica_where_no_submit_can_work(
    env: dict[str, str], tmp_path: Path, aiohttp_server: Server
) -> None:
    """PING answers on a read-only replica; /readyz does not say ok there, and a submit is
    refused (not a 500)."""
    from tests.faults.test_sentinel import Node

    master = Node(tmp_path / "master", [])
    replica = Node(tmp_path / "replica", ["--replicaof", "127.0.0.1", str(master.port)])
    try:
        url = f"redis://127.0.0.1:{replica.port}/0"
        settings = Settings.from_env(
            {
                **env,
                "TASKGATE_REDIS_URL": url,
                "TASKGATE_KEY_PREFIX": f"rep-{uuid.uuid4().hex[:6]}:",
            }
        )
        server = await serve_gateway(aiohttp_server, settings)
        status, body = await readyz(server)
        assert status == 503 and body["status"] == "unavailable", body
        assert body["redis"].startswith("unusable: the server is"), body
        async with (
            ClientSession() as session,
            session.post(
                server.make_url("/api/tasks"),
                json={"task": "demo.count"},
                headers=auth(f"rep-{uuid.uuid4().hex[:6]}"),
            ) as resp,
        ):
            refused = await resp.json()
        assert resp.status == 503 and refused["error"]["code"] == "store_unavailable", refused
    finally:
        replica.stop()
        master.stop()
