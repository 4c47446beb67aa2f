"""How a run ends (worker.runner): a result larger than TASKGATE_MAX_RESULT_BYTES is refused
whole (FAILED, ResultTooLarge, nothing stored); a cancel asked while a task runs wins over its
result even when the task never looked (the COMPLETED end turns CANCELLED in the same script
run). A real gateway, a real worker of their own, real Redis."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
from celery.result import AsyncResult

from shared.settings import Settings
from tests.support import CeleryWorker, ServerFactory, auth, gateway_apart
from worker.celery_app import make_celery

MODULES = "worker.demo,tests.faults.tasks_faults"
LIMIT = 4096


@pytest.fixture
async def apart(
    env: dict[str, str], aiohttp_server: ServerFactory, log_dir: Path
) -> AsyncIterator[tuple[Settings, str]]:
    settings, url = await gateway_apart(
        aiohttp_server, env, TASKGATE_TASK_MODULES=MODULES, TASKGATE_MAX_RESULT_BYTES=str(LIMIT)
    )
    worker_env = {
        **env,
        "TASKGATE_KEY_PREFIX": settings.key_prefix,
        "TASKGATE_TASK_MODULES": MODULES,
        "TASKGATE_MAX_RESULT_BYTES": str(LIMIT),
    }
    worker = await asyncio.to_thread(CeleryWorker(worker_env, log_dir, concurrency=2).start)
    try:
        yield settings, url
    finally:
        await asyncio.to_thread(worker.stop)


async def submit(session: aiohttp.ClientSession, url: str, who: str, body: Any) -> str:
    async with session.post(url + "api/tasks", json=body, headers=auth(who)) as r:
        assert r.status == 202, await r.text()
        task_id: str = (await r.json())["task_id"]
        return task_id


async def until(
    session: aiohttp.ClientSession, url: str, who: str, task_id: str, statuses: set[str]
) -> dict[str, Any]:
    async with asyncio.timeout(30):
        while True:
            async with session.get(url + f"api/tasks/{task_id}", headers=auth(who)) as r:
                snap: dict[str, Any] = await r.json()
            if snap["status"] in statuses:
                return snap
            await asyncio.sleep(0.05)


async def test_a_result_above_the_limit_fails_the_task_and_is_stored_nowhere(
    apart: tuple[Settings, str],
) -> None:
    settings, url = apart
    who = f"big-{uuid.uuid4().hex[:6]}"
    async with aiohttp.ClientSession() as session:
        small = await submit(session, url, who, {"task": "faults.blob", "input": {"size": 100}})
        big = await submit(session, url, who, {"task": "faults.blob", "input": {"size": LIMIT}})
        done = await until(session, url, who, small, {"COMPLETED", "FAILED"})
        refused = await until(session, url, who, big, {"COMPLETED", "FAILED"})
    assert done["status"] == "COMPLETED" and done["result"] == {"blob": "x" * 100}
    assert refused["status"] == "FAILED" and refused["result"] is None
    assert refused["error"]["type"] == "ResultTooLarge"
    assert "TASKGATE_MAX_RESULT_BYTES (4,096)" in refused["error"]["message"]
    # Celery's own result backend holds the failure, not the blob.
    client = redis.Redis.from_url(str(settings.redis_url))
    try:
        stored = [client.get(k) or b"" for k in client.scan_iter(f"*celery-task-meta-{big}")]
    finally:
        client.close()
    assert stored and all(b"xxxx" not in raw for raw in stored)


async def test_a_cancel_asked_while_a_task_runs_wins_over_its_result_when_it_never_looked(
    apart: tuple[Settings, str],
) -> None:
    _, url = apart
    who = f"deaf-{uuid.uuid4().hex[:6]}"
    async with aiohttp.ClientSession() as session:
        body = {"task": "faults.deaf", "input": {"seconds": 1.0}}
        cancelled, kept = [await submit(session, url, who, body) for _ in range(2)]
        await until(session, url, who, cancelled, {"RUNNING"})
        async with session.delete(url + f"api/tasks/{cancelled}", headers=auth(who)) as r:
            assert r.status in (200, 202), await r.text()
        first = await until(session, url, who, cancelled, {"COMPLETED", "CANCELLED"})
        second = await until(session, url, who, kept, {"COMPLETED", "CANCELLED"})
    assert first["status"] == "CANCELLED" and first["result"] is None, first
    assert second["status"] == "COMPLETED" and second["result"] == {"slept": 1.0}


def _monitor(
    url: str, needle: str, ready: threading.Event, stop: threading.Event, seen: list[str]
) -> None:
    """Every command Redis runs that names ``needle`` (MONITOR; ``ready`` once it watches),
    until ``stop``."""
    client = redis.Redis.from_url(url)
    try:
        with client.monitor() as monitor:
            ready.set()
            while not stop.is_set():
                command = monitor.next_command()
                text = str(command.get("command", ""))
                if needle in text:
                    seen.append(f"{command.get('client_type', '')} {text}")
    finally:
        client.close()


async def test_celery_s_own_result_is_written_once_with_the_completed_end(
    apart: tuple[Settings, str],
) -> None:
    """The records and the result backend on one Redis: the COMPLETED end writes Celery's result
    in its own script run (a SET with the backend's expiry and a PUBLISH, nothing from the pool
    process after it), and ``AsyncResult.get`` waiting meanwhile gets it, as Celery wrote it."""
    settings, url = apart
    who = f"meta-{uuid.uuid4().hex[:6]}"
    app = make_celery(settings)
    ready, stop, seen = threading.Event(), threading.Event(), []
    # Watching before the task is submitted: every write of its result key is seen.
    watcher = threading.Thread(
        target=_monitor, args=(str(settings.redis_url), "celery-task-meta-", ready, stop, seen)
    )
    watcher.start()

    def wake_monitor() -> None:
        with redis.Redis.from_url(str(settings.redis_url)) as client:
            client.ping()

    try:
        assert await asyncio.to_thread(ready.wait, 10), "MONITOR did not start"
        async with aiohttp.ClientSession() as session:
            task_id = await submit(
                session, url, who, {"task": "faults.deaf", "input": {"seconds": 0.5}}
            )
            got = await asyncio.to_thread(AsyncResult(task_id, app=app).get, timeout=20)
            snap = await until(session, url, who, task_id, {"COMPLETED"})
            await asyncio.sleep(0.3)  # what Celery would write after the script
    finally:
        stop.set()
        await asyncio.to_thread(wake_monitor)
        await asyncio.to_thread(watcher.join, 10)
    key = f"celery-task-meta-{task_id}"
    seen = [line for line in seen if key in line]
    assert got == {"slept": 0.5} == snap["result"]
    lines = [line.split(" ") for line in seen]
    writes = [" ".join(w) for w in lines if w[1] in ("SET", "SETEX", "PUBLISH")]
    # From the script only (Celery's own store would be a SETEX and a PUBLISH from the pool).
    assert [w.split(" ")[:2] for w in writes] == [["lua", "SET"], ["lua", "PUBLISH"]], seen
    assert " EX " in writes[0], writes
    client = redis.Redis.from_url(str(settings.redis_url))
    try:
        (stored,) = list(client.scan_iter(f"*{key}"))  # the backend's key prefix before it
        raw = client.get(stored)
        ttl = client.ttl(stored)
    finally:
        client.close()
    assert raw is not None and 0 < ttl <= settings.retention_s
    meta = json.loads(raw)
    assert meta["status"] == "SUCCESS" and meta["result"] == {"slept": 0.5}, meta
    assert meta["task_id"] == task_id and meta["traceback"] is None and meta["children"] == []
    assert datetime.fromisoformat(meta["date_done"]).tzinfo is not None
    app.close()
