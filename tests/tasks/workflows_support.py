"""What the workflow tests share: a user of each test's own, and waits on a workflow and a task."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from aiohttp.test_utils import TestClient

from tests.support import SocketClient, auth

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")


def user() -> str:
    return f"wf-{uuid.uuid4().hex[:8]}"


def add(value: float, **options: Any) -> dict[str, Any]:
    """A ``demo.add`` step (it adds ``value`` to the totals it is handed)."""
    return {"task": "demo.add", "input": {"value": value}, **options}


async def wait_workflow(
    http: TestClient, who: str, wid: str, timeout: float = 30.0
) -> dict[str, Any]:
    """Poll the workflow snapshot until it is terminal (each child's result is in its record)."""
    async with asyncio.timeout(timeout):
        while True:
            snap = await (await http.get(f"/api/workflows/{wid}", headers=auth(who))).json()
            if snap["status"] in TERMINAL:
                return snap
            await asyncio.sleep(0.1)


async def result_of(http: TestClient, who: str, task_id: str) -> dict[str, Any]:
    resp = await http.get(f"/api/tasks/{task_id}/result?wait=20", headers=auth(who))
    assert resp.status == 200
    return await resp.json()


async def submit(http: TestClient, who: str, body: Any) -> dict[str, Any]:
    resp = await http.post("/api/workflows", json=body, headers=auth(who))
    assert resp.status == 202, (resp.status, await resp.text())
    return await resp.json()


def record_rollups(client: SocketClient) -> list[dict[str, Any]]:
    """Every ``workflow`` event the client gets, in order (a list that fills as they come)."""
    rollups: list[dict[str, Any]] = []

    @client.sio.on("workflow")
    async def on_workflow(data: dict[str, Any]) -> None:
        rollups.append(data)
        client._changed.set()

    return rollups
