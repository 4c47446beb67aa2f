"""The bounded soak (issue 3, promise 12): many tasks while workers and connections die.

Not part of the default run. Start it with::

    TASKGATE_SOAK=1 .venv/bin/pytest -q -s tests/faults/test_soak.py

``TASKGATE_SOAK_TASKS`` (default 1000) tasks go in over HTTP and Socket.IO (half each) from
ten users, spread over ``TASKGATE_SOAK_SECONDS`` (default 60), while every few seconds a worker
is killed with SIGKILL (the whole worker, or one pool process running a task) and replaced, and
now and then every pub/sub connection of Redis is killed (the gateway's relay, the workers').
It prints the counts that must be 0: lost (accepted but no terminal update reached the owner),
duplicated terminal (two different terminal updates), wrong owner (an update reaching another
user's client).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis

from tests.support import (
    FAULT_ENV,
    CeleryWorker,
    GatewayProcess,
    RedisServer,
    SocketClient,
    applied_updates,
    base_env,
    make_token,
    reconnecting,
)

pytestmark = [
    pytest.mark.skipif(not os.environ.get("TASKGATE_SOAK"), reason="set TASKGATE_SOAK=1"),
    pytest.mark.timeout(600),
]

TERMINAL = {"COMPLETED", "FAILED", "TIMED_OUT", "CANCELLED"}
USERS = 10
WORKERS = 2


async def test_soak(tmp_path: Path) -> None:
    n_tasks = int(os.environ.get("TASKGATE_SOAK_TASKS", "1000"))
    spread = float(os.environ.get("TASKGATE_SOAK_SECONDS", "60"))
    server = RedisServer(tmp_path / "redis").start()
    env = base_env(
        server.url,
        f"soak-{uuid.uuid4().hex[:6]}:",
        **FAULT_ENV,
        TASKGATE_MAX_ACTIVE="0",
        TASKGATE_LOG_LEVEL="WARNING",
    )
    sync = redis.Redis.from_url(server.url)
    workers = [
        await asyncio.to_thread(CeleryWorker(env, tmp_path, concurrency=4).start)
        for _ in range(WORKERS)
    ]
    gateway = await asyncio.to_thread(GatewayProcess(env, tmp_path).start)
    users = [f"soak-{i}-{uuid.uuid4().hex[:4]}" for i in range(USERS)]
    clients = {
        u: reconnecting(await SocketClient(gateway.url, make_token(u)).connect()) for u in users
    }
    owner: dict[str, str] = {}
    refused: Counter[str] = Counter()
    chaos: Counter[str] = Counter()
    stop = asyncio.Event()

    async def submit_all() -> None:
        async with aiohttp.ClientSession() as session:
            for i in range(n_tasks):
                u = users[i % USERS]
                body = {"task": "faults.steps", "input": {"steps": 5, "delay": 0.05}}
                if i % 2:
                    ack = await clients[u].call("submit", body)
                    task_id = ack.get("task_id")
                    why = None if task_id else str(ack.get("error", {}).get("code"))
                else:
                    headers = {"Authorization": f"Bearer {make_token(u)}"}
                    async with session.post(
                        f"{gateway.url}/api/tasks", json=body, headers=headers
                    ) as resp:
                        answer = await resp.json()
                        task_id = answer.get("task_id") if resp.status == 202 else None
                        why = None if task_id else str(resp.status)
                if task_id:
                    owner[task_id] = u
                else:
                    refused[why or "?"] += 1
                await asyncio.sleep(spread / n_tasks)

    async def havoc() -> None:
        rng = random.Random(7)
        tick = 0
        while not stop.is_set():
            await asyncio.sleep(rng.uniform(2.0, 4.0))
            tick += 1
            i = rng.randrange(len(workers))
            pool = workers[i].pool_pids()
            if tick % 3 == 0 and pool:
                os.kill(rng.choice(pool), signal.SIGKILL)
                chaos["pool process killed"] += 1
            else:
                await asyncio.to_thread(workers[i].stop, signal.SIGKILL)
                workers[i] = await asyncio.to_thread(
                    CeleryWorker(env, tmp_path, concurrency=4).start
                )
                chaos["worker killed and replaced"] += 1
            if tick % 2 == 0:
                sync.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
                chaos["pub/sub connections killed"] += 1

    started = time.monotonic()
    chaos_task = asyncio.create_task(havoc())
    try:
        await submit_all()
    finally:
        stop.set()
        await chaos_task
    submitted_s = time.monotonic() - started

    def ended(task_id: str) -> bool:
        return any(e["status"] in TERMINAL for e in clients[owner[task_id]].events[task_id])

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not all(ended(t) for t in owner):  # noqa: ASYNC110
        await asyncio.sleep(0.5)

    lost = [t for t in owner if not ended(t)]
    duplicated = wrong = 0
    statuses: Counter[str] = Counter()
    reruns = 0
    for u, client in clients.items():
        for task_id, events in client.events.items():
            if owner.get(task_id) != u:
                wrong += 1
                continue
            ends = {e["seq"] for e in events if e["status"] in TERMINAL}
            if len(ends) > 1:
                duplicated += 1
            applied = applied_updates(events)
            if applied and applied[-1]["status"] in TERMINAL:
                statuses[applied[-1]["status"]] += 1
    for task_id in owner:
        raw: Any = sync.hget(f"{env['TASKGATE_KEY_PREFIX']}task:{task_id}", "_attempt")
        reruns += int(raw or 1) > 1
    summary = (
        f"soak: {len(owner)} accepted ({sum(refused.values())} refused: {dict(refused)}) in "
        f"{submitted_s:.0f}s; lost={len(lost)} duplicated_terminal={duplicated} "
        f"wrong_owner={wrong}; ended {dict(statuses)}; rerun after a kill: {reruns}; "
        f"chaos {dict(chaos)}"
    )
    print("\n" + summary)
    for task_id in lost[:5]:
        record = {
            k.decode(): v.decode()
            for k, v in sync.hgetall(  # type: ignore[union-attr]
                f"{env['TASKGATE_KEY_PREFIX']}task:{task_id}"
            ).items()
            if not k.startswith(b"prog")
        }
        seen = [(e["seq"], e["status"]) for e in clients[owner[task_id]].events[task_id]]
        print(f"lost {task_id}: record {record}; owner saw {seen[-3:]}")
        for log in sorted(tmp_path.glob("*.log")):  # noqa: ASYNC240 (the run is over)
            for line in log.read_text(errors="replace").splitlines():
                if task_id in line:
                    print(f"  {log.name}: {line[:300]}")
    for client in clients.values():
        await client.close()
    await asyncio.to_thread(gateway.stop)
    for w in workers:
        await asyncio.to_thread(w.stop)
    sync.close()
    server.stop()
    assert (len(lost), duplicated, wrong) == (0, 0, 0), (summary, lost[:5])
