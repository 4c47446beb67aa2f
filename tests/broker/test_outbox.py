"""The outbox broker (the records' Redis is the broker, one script accepts) when Redis fails part
way through a batch."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.broker.outbox import OutboxBroker, outbox_key
from gateway.broker.redis_broker import RedisBroker
from gateway.tasks.service import TaskService
from shared.errors import BrokerUnavailable
from shared.records import AsyncRecords
from shared.redis_client import async_client
from shared.settings import Settings
from tests.support import RedisServer

BODY = {"task": "demo.count", "input": {"steps": 2}}


async def test_batch_failing_after_a_chunk_ran_leaves_nothing_accepted(tmp_path: Path) -> None:
    """Redis runs out of memory part way through a 3,000-task batch: the batch is refused (503)
    and the records of the chunk that did run are taken back, although Redis refuses commands
    queued in MULTI at that moment."""
    server = RedisServer(tmp_path / "redis", appendonly=False).start()
    client = async_client(server.url)
    settings = Settings(redis_url=server.url, key_prefix="oom:", max_active=0, submit_rate=0)
    broker = OutboxBroker(RedisBroker(server.url, settings.keys.broker_prefix), settings.keys)
    manager = TaskService(
        settings, AsyncRecords(client, settings.keys, settings.retention_s), broker
    )
    bodies = [BODY] * 3000
    try:
        assert len(await manager.submit_many("mem", bodies[:10])) == 10
        used = int((await client.info("memory"))["used_memory"])
        # Room for the first runs of the batch (Redis checks the limit when a script starts, and
        # the runs not yet started wait in its query buffer, which counts), not for all 3,000.
        await client.config_set("maxmemory", used + 4 * 2**20)
        with pytest.raises(BrokerUnavailable):
            await manager.submit_many("mem", bodies)
        await client.config_set("maxmemory", 0)
        # The first chunk ran (its outbox copies are there), yet none of its tasks is accepted.
        assert await client.hlen(outbox_key(settings.keys)) >= 1000 + 10
        assert await client.zcard(settings.keys.user_tasks("mem")) == 10
        assert await client.zcard(settings.keys.user_active("mem")) == 10
        listed = await manager.list_tasks("mem", limit=100)
        assert len(listed) == 10
        # With memory back, the same batch goes through whole.
        answers = await manager.submit_many("mem", bodies)
        assert all(isinstance(a, dict) for a in answers)
        assert await client.zcard(settings.keys.user_tasks("mem")) == 3010
    finally:
        await manager.close()
        await broker.close()
        await client.aclose()
        server.stop()
