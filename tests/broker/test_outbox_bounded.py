"""The outbox stays bounded under sustained load: a task's copy goes when the task ends, in the
step that ends it (``transition.lua``), not at the next sweep.

A real gateway (its broker the records' Redis, so the outbox is on) and the session's real
Celery worker; tasks go in through ``POST /api/tasks/batch`` at a sustained rate for a bounded
time while the outbox's size (``HLEN``) is sampled every second together with the user's
tasks not ended, in one ``MULTI`` (one moment). The sweep (``watch_outbox``) is given an
interval far beyond the test, so it never runs: whatever left the outbox was taken out by the
transitions. Before that change the outbox grew by the rate of finished tasks (about +100
copies/s at 277 tasks/s) until a sweep caught up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

import gateway.resources
from gateway.broker import outbox
from shared.keys import Keys
from shared.settings import Settings
from tests.support import COUNT, CeleryWorker, RedisServer, ServerFactory, auth, serve_gateway

pytestmark = pytest.mark.timeout(240)

SECONDS = 15.0  # how long the load lasts
TICK = 0.1  # one batch per tick
BATCH = 25  # tasks per batch: 250 tasks/s
# What may be in the outbox beyond the tasks not ended at one moment: nothing, as a copy and
# its task's place among the tasks not ended come and go in the same script run; a few for
# copies of earlier tests whose tasks are still ending.
MARGIN = 5
NEVER = 3600.0  # the sweep's interval in this test


@pytest.fixture
def no_sweep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every gateway started in the test sweeps its outbox only every ``NEVER`` seconds;
    returns the intervals it was asked for."""
    asked: list[float] = []
    real = outbox.watch_outbox

    def watch(broker: Any, queues: Any, interval: float, **kw: Any) -> Any:
        asked.append(interval)
        return real(broker, queues, NEVER, **kw)

    monkeypatch.setattr(gateway.resources, "watch_outbox", watch)
    return asked


async def sample(store: aioredis.Redis, keys: Keys, user: str) -> tuple[int, int]:
    """(copies in the outbox, the user's tasks not ended), read at one moment."""
    async with store.pipeline(transaction=True) as pipe:
        pipe.hlen(keys.outbox)
        pipe.zcard(keys.user_active(user))
        size, active = await pipe.execute()
    return int(size), int(active)


def gauge(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


async def test_outbox_stays_bounded_under_sustained_load_without_the_sweep(
    env: dict[str, str],
    celery_worker: CeleryWorker,
    aiohttp_server: ServerFactory,
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    no_sweep: list[float],
) -> None:
    settings = Settings.from_env({**env, "TASKGATE_SUBMIT_RATE": "0", "TASKGATE_MAX_ACTIVE": "0"})
    keys = settings.keys
    server = await serve_gateway(aiohttp_server, settings)
    assert no_sweep, "the gateway's outbox sweep was not started"
    http = await aiohttp_client(server)
    store = aioredis.Redis.from_url(str(settings.redis_url))
    user = f"bounded-{uuid.uuid4().hex[:6]}"
    ids: list[str] = []
    samples: list[tuple[float, int, int]] = []
    try:
        start_size, start_active = await sample(store, keys, user)
        assert start_active == 0
        begin = time.monotonic()

        async def submit() -> None:
            body = {"tasks": [COUNT] * BATCH}
            n = 0
            while (due := begin + n * TICK) < begin + SECONDS:
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                resp = await http.post("/api/tasks/batch", json=body, headers=auth(user))
                assert resp.status == 202, await resp.text()
                items = (await resp.json())["tasks"]
                assert all("task_id" in item for item in items), items
                ids.extend(item["task_id"] for item in items)
                n += 1

        async def watch() -> None:
            while True:
                size, active = await sample(store, keys, user)
                samples.append((time.monotonic() - begin, size, active))
                await asyncio.sleep(1.0)

        watcher = asyncio.create_task(watch())
        try:
            await submit()
            submitted_s = time.monotonic() - begin
            # Every task ends (COMPLETED): the user has none left not ended.
            deadline = time.monotonic() + 150
            while True:
                if (await sample(store, keys, user))[1] == 0:
                    break
                assert time.monotonic() < deadline, "tasks still not ended after 150 s"
                await asyncio.sleep(0.5)
            drained_s = time.monotonic() - begin
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        end_size, end_active = await sample(store, keys, user)
        async with store.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.hget(keys.task(task_id), "status")
            statuses = await pipe.execute()
        metrics = await (await http.get("/metrics")).text()
    finally:
        await store.aclose()

    peak = max(size for _, size, _ in samples)
    print(
        f"\noutbox: {len(ids)} tasks in {submitted_s:.1f}s ({len(ids) / submitted_s:.0f}/s), "
        f"all ended at {drained_s:.1f}s; size at start {start_size}, peak {peak} "
        f"(tasks not ended then: {max(a for _, s, a in samples if s == peak)}), "
        f"end {end_size}; samples (s, size, not ended): "
        + ", ".join(f"({t:.0f}, {s}, {a})" for t, s, a in samples)
    )
    assert len(ids) == int(SECONDS / TICK) * BATCH
    assert statuses == [b'"COMPLETED"'] * len(ids)
    # At every moment: no more copies than tasks not ended (and what was there before).
    for t, size, active in samples:
        assert size <= start_size + active + MARGIN, (t, size, active, start_size)
    # Once every task ended, none of its copies is left.
    assert end_active == 0
    assert end_size <= start_size
    assert gauge(metrics, "taskgate_outbox_size") == end_size
    # The sweep never ran: it was asked to wait NEVER seconds before its first round.
    assert no_sweep == [max(1.0, min(10.0, settings.visibility_timeout / 4))]
    assert drained_s < NEVER


async def test_metrics_skip_the_outbox_size_when_redis_fails(
    env: dict[str, str],
    tmp_path: Path,
    aiohttp_server: ServerFactory,
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
) -> None:
    """The gauge is one HLEN per scrape; with Redis gone the scrape still answers 200, without
    it."""
    redis_server = RedisServer(tmp_path / "redis", appendonly=False).start()
    try:
        settings = Settings.from_env(
            {
                **env,
                "TASKGATE_REDIS_URL": redis_server.url,
                "TASKGATE_KEY_PREFIX": f"gauge-{uuid.uuid4().hex[:6]}:",
            }
        )
        server = await serve_gateway(aiohttp_server, settings)
        http = await aiohttp_client(server)
        resp = await http.post("/api/tasks", json=COUNT, headers=auth("gauge"))
        assert resp.status == 202, await resp.text()
        resp = await http.get("/metrics")
        assert resp.status == 200
        assert gauge(await resp.text(), "taskgate_outbox_size") == 1.0  # no worker: it waits
        redis_server.stop()
        resp = await http.get("/metrics")
        assert resp.status == 200
        text = await resp.text()
        assert gauge(text, "taskgate_outbox_size") is None
        assert "taskgate_uptime_seconds" in text
    finally:
        redis_server.stop()
