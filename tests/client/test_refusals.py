"""429 and 503 as ``RateLimited`` and ``Unavailable`` with ``retry_after``, and retried with
backoff when the caller asks (``retry=RetryPolicy(...)``): against real gateway processes,
one with a tiny submit rate, one whose Redis is stopped and started again."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from client import AsyncClient, GatewayUnreachable, RateLimited, RetryPolicy, Unavailable
from tests.client.helpers import answers
from tests.support import GatewayProcess, RedisServer, base_env


async def test_rate_limited_carries_retry_after_and_is_retried_when_asked(
    client_env: dict[str, str], log_dir: Path, token: str
) -> None:
    env = {**client_env, "TASKGATE_SUBMIT_RATE": "0.25", "TASKGATE_SUBMIT_BURST": "1"}
    gateway = await asyncio.to_thread(GatewayProcess(env, log_dir).start)
    try:
        body = {"steps": 1, "delay": 0}
        async with AsyncClient(gateway.url, token) as client:
            await client.submit("demo.count", body)
            with pytest.raises(RateLimited) as caught:
                await client.submit("demo.count", body)
            assert caught.value.status == 429 and caught.value.code == "rate_limited"
            assert caught.value.retry_after is not None and caught.value.retry_after >= 1
        refused = await answers(gateway.url, "POST", "/api/tasks", 429)
        policy = RetryPolicy(attempts=5, base=0.2, cap=10)
        async with AsyncClient(gateway.url, token, retry=policy) as patient:
            snap = await patient.submit("demo.count", body)
        assert snap["status"] == "PENDING"
        # It was refused first (the bucket was empty), waited Retry-After, and got in.
        assert await answers(gateway.url, "POST", "/api/tasks", 429) > refused
        # A policy that does not cover 429 raises it at once.
        strict = RetryPolicy(attempts=5, rate_limited=False)
        async with AsyncClient(gateway.url, token, retry=strict) as client:
            with pytest.raises(RateLimited):
                await client.submit("demo.count", body)
    finally:
        await asyncio.to_thread(gateway.stop)


async def test_unavailable_while_redis_is_down_and_retried_until_it_is_back(
    tmp_path: Path, log_dir: Path, token: str
) -> None:
    redis = await asyncio.to_thread(RedisServer(tmp_path / "redis").start)
    env = base_env(redis.url, f"tgc503-{uuid.uuid4().hex[:8]}:", TASKGATE_SUBMIT_RATE="0")
    gateway = await asyncio.to_thread(GatewayProcess(env, log_dir).start)
    try:
        async with AsyncClient(gateway.url, token) as client:
            snap = await client.submit("demo.count", {"steps": 1})  # no worker: stays PENDING
            await asyncio.to_thread(redis.stop)
            for call in (client.list(), client.get(snap["task_id"])):
                with pytest.raises(Unavailable) as caught:
                    await call
                assert caught.value.status == 503 and caught.value.code == "store_unavailable"
                assert caught.value.retry_after is not None and caught.value.retry_after >= 1
            with pytest.raises(Unavailable):
                await client.submit("demo.count", {"steps": 1})  # nothing accepted

            before = await answers(gateway.url, "GET", "/api/tasks", 503)
            policy = RetryPolicy(attempts=20, base=0.2, cap=2)
            async with AsyncClient(gateway.url, token, retry=policy) as patient:
                listing = asyncio.create_task(patient.list())
                # Redis comes back only once the patient call has been refused at least once.
                async with asyncio.timeout(20):
                    while await answers(gateway.url, "GET", "/api/tasks", 503) <= before:  # noqa: ASYNC110 (polls another process)
                        await asyncio.sleep(0.1)
                assert not listing.done()
                redis = await asyncio.to_thread(
                    RedisServer(tmp_path / "redis", port=redis.port).start
                )
                async with asyncio.timeout(60):
                    listed = await listing
            assert isinstance(listed, list)
    finally:
        await asyncio.to_thread(gateway.stop)
        await asyncio.to_thread(redis.stop)


async def test_no_gateway_is_gateway_unreachable_and_retried_only_when_asked(
    token: str,
) -> None:
    from gateway.cli.embedded import free_port

    url = f"http://127.0.0.1:{free_port()}"
    async with AsyncClient(url, token) as client:
        with pytest.raises(GatewayUnreachable) as caught:
            await client.list()
        assert isinstance(caught.value, Unavailable) and caught.value.status is None
    policy = RetryPolicy(attempts=2, base=0.01, cap=0.05)
    async with AsyncClient(url, token, retry=policy) as client:
        with pytest.raises(GatewayUnreachable):
            await client.list()
