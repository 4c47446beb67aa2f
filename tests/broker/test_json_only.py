"""JSON only on the broker (issue 4): workers refuse pickle, results are JSON in the backend."""

from __future__ import annotations

import asyncio
import base64
import os
import pickle
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import redis

from gateway.broker.message import build_task_message
from gateway.broker.redis_broker import RedisBroker, redis_priority
from shared.settings import Settings
from tests.support import (
    CeleryWorker,
    SocketClient,
)

Connect = Callable[[str], Awaitable[SocketClient]]


def user() -> str:
    return f"s-{uuid.uuid4().hex[:8]}"


class _Exploit:
    """Unpickling this runs a shell command: the marker file proves whether it ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


async def test_worker_refuses_a_pickle_message(
    settings: Settings, celery_worker: CeleryWorker, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    task_id = str(uuid.uuid4())
    msg = build_task_message(task_id, "demo.count", "fast", kwargs={"steps": 1})
    envelope = orjson.loads(msg.redis_envelope(redis_priority(0)))
    envelope["body"] = base64.b64encode(
        pickle.dumps(((), {"steps": _Exploit(marker)}, {}), protocol=2)
    ).decode()
    envelope["content-type"] = "application/x-python-serialize"
    envelope["content-encoding"] = "binary"
    assert settings.redis_url is not None
    broker = RedisBroker(settings.redis_url, settings.keys.broker_prefix)
    key = broker.queue_key("fast", redis_priority(0))
    log_size = celery_worker.log.stat().st_size
    await broker.client.lpush(key, orjson.dumps(envelope))
    try:
        async with asyncio.timeout(20):
            while True:
                with celery_worker.log.open("rb") as fh:
                    fh.seek(log_size)
                    tail = fh.read()
                if b"application/x-python-serialize" in tail and (
                    b"Refusing to deserialize" in tail or b"ContentDisallowed" in tail
                ):
                    break
                await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        assert not marker.exists(), "the pickle payload ran"
        assert await broker.client.llen(key) == 0  # taken off the queue, not redelivered
        assert not await broker.client.exists(settings.keys.task(task_id))
    finally:
        await broker.close()


async def test_results_are_json_in_the_backend(settings: Settings, sockets: Connect) -> None:
    client = await sockets(user())
    ack = await client.call("submit", {"task": "demo.count", "input": {"steps": 2, "delay": 0}})
    final = await client.wait_terminal(ack["task_id"])
    assert final["result"] == {"counted": 2}
    assert settings.redis_url is not None
    url = settings.redis_url

    def read() -> tuple[bytes | None, bytes | None]:
        # In a thread: the gateway fixture forbids blocking calls on the loop.
        with redis.Redis.from_url(url) as store:
            meta = store.get(f"{settings.keys.broker_prefix}celery-task-meta-{ack['task_id']}")
            return meta, store.hget(settings.keys.task(ack["task_id"]), "result")

    meta, record = await asyncio.to_thread(read)
    if meta is not None:  # the Celery backend's copy, when the runner keeps one
        assert orjson.loads(meta)["status"] == "SUCCESS"
    assert record is not None and orjson.loads(record) == {"counted": 2}
