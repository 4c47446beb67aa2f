"""At most one run at a time: two deliveries of one task's message taken by two pool processes
at once run it once (the start applies only at the run count its delivery read).

A real gateway writes the record and the message on a key prefix no worker consumes yet; the
message is then copied in its queue (what a redelivery or a republished outbox copy makes),
and a real worker with two pool processes takes both copies together.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import redis

from tests.support import CeleryWorker, ServerFactory, auth, gateway_apart, wait_until

MODULES = "worker.demo,tests.faults.tasks_faults"


async def test_two_copies_of_a_message_taken_at_once_run_the_task_once(
    env: dict[str, str], aiohttp_server: ServerFactory, log_dir: Path, tmp_path: Path
) -> None:
    settings, url = await gateway_apart(aiohttp_server, env, TASKGATE_TASK_MODULES=MODULES)
    runs = tmp_path / "runs"
    who = f"o-{uuid.uuid4().hex[:6]}"
    body = {"task": "faults.steps", "input": {"steps": 3, "delay": 0.05, "path": str(runs)}}
    async with aiohttp.ClientSession() as session:
        async with session.post(url + "api/tasks", json=body, headers=auth(who)) as r:
            assert r.status == 202, await r.text()
            task_id = (await r.json())["task_id"]
        store = redis.Redis.from_url(str(settings.redis_url))
        (queue,) = [q for q in settings.keys.broker_queues("fast") if store.llen(q)]
        (message,) = store.lrange(queue, 0, -1)
        store.lpush(queue, message)
        assert store.llen(queue) == 2
        worker_env = {**env, "TASKGATE_KEY_PREFIX": settings.key_prefix}
        worker_env["TASKGATE_TASK_MODULES"] = MODULES
        worker = await asyncio.to_thread(CeleryWorker(worker_env, log_dir, concurrency=2).start)
        try:
            snap = await _terminal(session, url, who, task_id)
            # Both copies were taken, and the other one has ended without a run of its own.
            await asyncio.to_thread(
                wait_until, lambda: store.llen(queue) == 0 and _declined(worker, task_id), 20
            )
        finally:
            await asyncio.to_thread(worker.stop)
            store.close()
    assert snap["status"] == "COMPLETED" and snap["result"] == {"counted": 3}
    assert len(runs.read_text().splitlines()) == 1, runs.read_text()


async def _terminal(
    session: aiohttp.ClientSession, url: str, who: str, task_id: str
) -> dict[str, Any]:
    async with asyncio.timeout(30):
        while True:
            async with session.get(url + f"api/tasks/{task_id}", headers=auth(who)) as r:
                snap: dict[str, Any] = await r.json()
            if snap["status"] in {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}:
                return snap
            await asyncio.sleep(0.1)


def _declined(worker: CeleryWorker, task_id: str) -> bool:
    """Whether the worker's log says a delivery of ``task_id`` ended without a run."""
    lines = worker.log.read_text(errors="replace").splitlines()
    return any(task_id in line and "not running it" in line for line in lines)
