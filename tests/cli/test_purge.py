"""``taskgate purge QUEUE`` (issue 14, item 7): the messages go, their tasks end CANCELLED
``Purged``, and no outbox copy is left to publish them again."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid

import aiohttp
import redis.asyncio as aioredis

from shared.settings import Settings
from tests.support import (
    COUNT,
    ROOT,
    ServerFactory,
    auth,
    footprint,
    isolated_env,
    start_gateway,
)


async def test_purge_removes_the_messages_and_ends_their_tasks(
    env: dict[str, str], aiohttp_server: ServerFactory
) -> None:
    # A prefix no worker consumes: the messages wait on the queue.
    purge_env = isolated_env(env, TASKGATE_SUBMIT_RATE="0")
    settings = Settings.from_env(purge_env)
    _, url = await start_gateway(aiohttp_server, settings)
    who = f"p-{uuid.uuid4().hex[:6]}"
    store = aioredis.Redis.from_url(str(settings.redis_url))
    try:
        async with aiohttp.ClientSession() as session:
            body = {"tasks": [COUNT] * 5 + [{**COUNT, "countdown": 60}]}
            async with session.post(url + "api/tasks/batch", json=body, headers=auth(who)) as r:
                ids = [item["task_id"] for item in (await r.json())["tasks"]]
            # 5 on the queue, 1 held until due.
            assert (await footprint(store, settings.key_prefix))["broker_messages"] == 6
            out = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "gateway.cli.commands", "purge", "fast"],
                env=purge_env, cwd=ROOT, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert out.returncode == 0, out.stderr
            assert "purged 5 messages from fast; 6 tasks ended CANCELLED (Purged)" in out.stdout
            assert (await footprint(store, settings.key_prefix))["broker_messages"] == 0
            for task_id in ids:
                async with session.get(f"{url}api/tasks/{task_id}", headers=auth(who)) as r:
                    snap = await r.json()
                assert snap["status"] == "CANCELLED" and snap["error"]["type"] == "Purged"
                # No copy left for the outbox sweep to publish again, nothing held until due.
                assert not await store.hexists(settings.keys.outbox, task_id)
                assert await store.zscore(settings.keys.delayed, task_id) is None
            bad = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "gateway.cli.commands", "purge", "nope"],
                env=purge_env, cwd=ROOT, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert bad.returncode == 2 and "unknown queue 'nope'" in bad.stderr
    finally:
        await store.aclose()
