"""What the Ray tests share: submitting as a user of its own over HTTP with a Socket.IO client
listening, waiting for events, the parts' pids, and the cluster's free CPUs."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from tests.ray.conftest import free_cpus
from tests.support import SocketClient, auth

Connect = Callable[[str], Awaitable[SocketClient]]


USERS: dict[int, str] = {}


async def submit(
    http: TestClient, sockets: Connect, name: str, data: dict[str, Any]
) -> tuple[SocketClient, str]:
    who = f"ray-{uuid.uuid4().hex[:6]}"
    client = await sockets(who)
    USERS[id(client)] = who
    resp = await http.post("/api/tasks", json={"task": name, "input": data}, headers=auth(who))
    assert resp.status == 202, await resp.text()
    return client, (await resp.json())["task_id"]


def client_user(client: SocketClient) -> str:
    return USERS[id(client)]


async def part_pids(pid_dir: Path, count: int = 2, timeout: float = 30) -> list[int]:
    """The pids the parts wrote (tests/ray/ray_tasks.py), once all are there."""

    def read() -> list[int]:
        # A part writes ``i.tmp`` and renames it to ``i``: only whole files count.
        return [int(p.read_text()) for p in sorted(pid_dir.iterdir()) if p.suffix != ".tmp"]

    async with asyncio.timeout(timeout):
        while True:
            found = await asyncio.to_thread(read)
            if len(found) >= count:
                return found
            await asyncio.sleep(0.1)


def assert_in_order(events: list[dict[str, Any]]) -> None:
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs)), seqs
    for attempt in {e.get("attempt") for e in events}:  # percent starts again at a retry
        pcts = [
            e["progress"]["percent"]
            for e in events
            if e["status"] == "RUNNING" and e.get("attempt") == attempt
        ]
        assert pcts == sorted(pcts), pcts


async def wait_event(
    client: SocketClient, task_id: str, pred: Callable[[dict[str, Any]], bool], timeout: float
) -> dict[str, Any]:
    await client.wait_for(lambda: any(pred(e) for e in client.events[task_id]), timeout)
    return next(e for e in client.events[task_id] if pred(e))


async def cpus_free(ray: Any, want: float, timeout: float = 20.0) -> None:
    """Wait until the cluster has ``want`` CPUs free (Ray's view lags its tasks a little)."""
    async with asyncio.timeout(timeout):
        while True:
            if await asyncio.to_thread(free_cpus, ray) == want:
                return
            await asyncio.sleep(0.2)


async def cpus_back(ray: Any, total: float = 2.0, timeout: float = 20.0) -> None:
    """Wait until the cluster's CPUs are all free again (the Ray tasks were released)."""
    await cpus_free(ray, total, timeout)


async def cancel_mid_run(
    http: TestClient, sockets: Connect, ray: Any, first_progress_s: float = 30
) -> None:
    """Cancel a task whose two 60 s parts report progress (``tray.part_dies``, both CPUs busy)
    once they run, and check it ends CANCELLED with the Ray tasks released."""
    await cpus_back(ray)
    client, task_id = await submit(http, sockets, "tray.part_dies", {"seconds": 60})
    await wait_event(client, task_id, lambda e: e["progress"]["percent"] > 0, first_progress_s)
    # The parts hold both CPUs (the body waiting on them holds none while it waits).
    await cpus_free(ray, 0.0, timeout=10)
    resp = await http.delete(f"/api/tasks/{task_id}", headers=auth(client_user(client)))
    assert resp.status in (200, 202), await resp.text()
    final = await client.wait_terminal(task_id, timeout=30)
    assert final["status"] == "CANCELLED", final
    await cpus_back(ray)  # the Ray tasks were cancelled, not left running
