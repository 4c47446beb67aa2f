"""What the create scripts store (``create.lua``, ``create_batch.lua``): no field that reads the
same absent (a varying field null in every record of a run is left out, not stored as null),
``seq`` 1, the retention as the record's expiry, and the creation time as the score in the
owner's indexes, exactly as the record's ``created_at`` (the scripts hand these to Redis as
text)."""

from __future__ import annotations

import time
from uuid import uuid4

import orjson
import redis

from gateway.broker.message import build_task_message
from gateway.broker.outbox import OutboxBroker
from gateway.broker.redis_broker import RedisBroker
from shared.keys import Keys
from shared.records import AsyncRecords, CreateCode, new_record_fields
from shared.records_batch import BatchRecords, pending_common, pending_snapshot
from shared.redis_client import async_client
from shared.resp import Pipeline
from tests.support import RedisServer

RETENTION = 777
OWNER = "shape"


def check_stored(client: redis.Redis, keys: Keys, task_id: str, created: float) -> dict[str, str]:
    raw = client.hgetall(keys.task(task_id))
    fields = {k.decode(): v.decode() for k, v in raw.items()}
    assert fields["seq"] == "1" and fields["_owner"] == OWNER
    assert "null" not in fields.values(), fields
    assert 0 < client.ttl(keys.task(task_id)) <= RETENTION
    for index in (keys.user_tasks(OWNER), keys.user_active(OWNER)):
        assert client.zscore(index, task_id) == created
    assert float(fields["created_at"]) == created
    return fields


async def test_batch_records_store_no_nulls_and_exact_scores(
    redis_server: RedisServer, client: redis.Redis, keys: Keys
) -> None:
    aclient = async_client(redis_server.url)
    pipe = Pipeline(redis_server.url)
    broker = OutboxBroker(RedisBroker(redis_server.url, keys.broker_prefix), keys)
    batch = BatchRecords(aclient, keys, RETENTION, pipe)
    try:
        created = time.time()
        common = pending_common(created, ambient=False)
        plain = [
            {"task_id": str(uuid4()), "task": "demo.count", "queue": "fast", "webhook": None}
            for _ in range(3)
        ]
        hooked = [dict(r) for r in plain]
        for r in hooked:
            r["task_id"] = str(uuid4())
        hooked[1]["webhook"] = "https://example.com/hook"
        for rows, with_broker in ((plain, False), (plain, True), (hooked, True)):
            if with_broker:
                rows = [{**r, "task_id": str(uuid4())} for r in rows]
            inline = None
            if with_broker:
                messages = [build_task_message(r["task_id"], "demo.count", "fast") for r in rows]
                snaps = [orjson.dumps(pending_snapshot(common, r)) for r in rows]
                inline = broker.inline(messages, snaps)
            async with batch.runs(1) as runs:
                await runs.send(batch.create_args(OWNER, common, rows, created, 0, inline))
                (reply,) = await runs.replies()
            assert [CreateCode(int(c)) for c in reply] == [CreateCode.CREATED] * 3
            if rows[1]["webhook"] is None:
                # Null in every record of the run: not stored at all.
                for r in rows:
                    assert "webhook" not in check_stored(client, keys, r["task_id"], created)
            else:
                fields = check_stored_some_null(client, keys, rows, created)
                assert orjson.loads(fields["webhook"]) == "https://example.com/hook"
    finally:
        pipe.close()
        await broker.close()
        await aclient.aclose()


def check_stored_some_null(
    client: redis.Redis, keys: Keys, rows: list[dict[str, object]], created: float
) -> dict[str, str]:
    """A run where one record has a webhook: that one stores it (the others may hold null)."""
    raw = client.hgetall(keys.task(str(rows[1]["task_id"])))
    fields = {k.decode(): v.decode() for k, v in raw.items()}
    assert fields["seq"] == "1"
    assert client.zscore(keys.user_tasks(OWNER), str(rows[1]["task_id"])) == created
    return fields


async def test_single_record_stores_seq_expiry_and_exact_scores(
    redis_server: RedisServer, client: redis.Redis, keys: Keys
) -> None:
    aclient = async_client(redis_server.url)
    records = AsyncRecords(aclient, keys, RETENTION)
    try:
        created = time.time()
        task_id = str(uuid4())
        fields = new_record_fields(task_id, "demo.count", "fast", created)
        code, snapshot = await records.create(OWNER, fields, 0)
        assert code == CreateCode.CREATED
        stored = check_stored(client, keys, task_id, created)
        assert orjson.loads(stored["task"]) == "demo.count"
        assert orjson.loads(snapshot)["seq"] == 1
    finally:
        await aclient.aclose()
