"""The submit rate (a bucket shared by gateways) and the active-task quota (issue 4)."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import redis.asyncio as aioredis

from shared.settings import Settings
from tests.support import (
    COUNT,
    ServerFactory,
    SocketClient,
    auth,
    footprint,
    gateway_apart,
    isolated_env,
    make_token,
    start_gateway,
)


def user() -> str:
    return f"s-{uuid.uuid4().hex[:8]}"


async def test_submit_rate_is_a_bucket_shared_by_gateways(
    env: dict[str, str], aiohttp_server: ServerFactory
) -> None:
    shared_env = isolated_env(env, TASKGATE_SUBMIT_RATE="3", TASKGATE_SUBMIT_BURST="3")
    _, url1 = await start_gateway(aiohttp_server, Settings.from_env(shared_env))
    _, url2 = await start_gateway(aiohttp_server, Settings.from_env(shared_env))
    alice = user()
    async with aiohttp.ClientSession() as session:
        statuses = []
        for url in (url1, url2, url1, url2):
            async with session.post(url + "api/tasks", json=COUNT, headers=auth(alice)) as resp:
                statuses.append(resp.status)
                if resp.status == 429:
                    retry_after = int(resp.headers["Retry-After"])
                    body = await resp.json()
        assert statuses == [202, 202, 202, 429]
        assert 1 <= retry_after <= 2 and body["error"]["code"] == "rate_limited"
        # another user has a bucket of their own
        async with session.post(url2 + "api/tasks", json=COUNT, headers=auth(user())) as resp:
            assert resp.status == 202
        # the socket path draws from the same bucket
        client = await SocketClient(url2, make_token(alice)).connect()
        ack = await client.call("submit", COUNT)
        assert ack["error"]["code"] == "rate_limited"
        await client.close()
        await asyncio.sleep(retry_after)
        async with session.post(url1 + "api/tasks", json=COUNT, headers=auth(alice)) as resp:
            assert resp.status == 202


async def test_max_active_answers_429_and_records_nothing(
    env: dict[str, str], aiohttp_server: ServerFactory
) -> None:
    settings, url = await gateway_apart(aiohttp_server, env, TASKGATE_MAX_ACTIVE="2")
    assert settings.redis_url is not None
    store = aioredis.Redis.from_url(settings.redis_url)
    alice = user()
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            async with session.post(url + "api/tasks", json=COUNT, headers=auth(alice)) as resp:
                assert resp.status == 202
        before = await footprint(store, settings.key_prefix)
        async with session.post(url + "api/tasks", json=COUNT, headers=auth(alice)) as resp:
            assert resp.status == 429
            assert int(resp.headers["Retry-After"]) >= 1
            assert (await resp.json())["error"]["code"] == "rate_limited"
        assert await footprint(store, settings.key_prefix) == before == {
            "records": 2, "broker_messages": 2,
        }  # fmt: skip
    await store.aclose()
