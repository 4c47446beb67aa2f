"""``Client``, the blocking flavour: the same methods, a plain iterator for ``follow``, and it
works in a thread whose own event loop is running (Jupyter, sync code called from async)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import pytest

from client import Client, InvalidInput, NotFound, RetryPolicy, submit_body
from tests.support import GatewayProcess


def exercise(client: Client) -> dict[str, Any]:
    """Every method once; what they answered."""
    key = uuid.uuid4().hex
    snap = client.submit("demo.count", {"steps": 3, "delay": 0.05}, idempotency_key=key)
    task_id = snap["task_id"]
    seen = list(client.follow(task_id))
    sleeper = client.submit("demo.sleep", {"seconds": 120})
    cancelled = client.cancel(sleeper["task_id"])
    batch = client.submit_many([submit_body("demo.count", {"steps": 1, "delay": 0}), {"task": "x"}])
    with pytest.raises(InvalidInput):
        client.submit("demo.count", {"steps": -1})
    with pytest.raises(NotFound):
        client.get(str(uuid.uuid4()))
    return {
        "snap": snap,
        "seen": seen,
        "got": client.get(task_id),
        "result": client.result(task_id, wait=10),
        "sleeper": client.result(sleeper["task_id"], wait=30),
        "cancelled": cancelled,
        "batch": batch,
        "listed": client.list(limit=10),
        "types": client.task_types(),
    }


def check(out: dict[str, Any]) -> None:
    seen = out["seen"]
    seqs = [s["seq"] for s in seen]
    assert seqs == sorted(set(seqs)) and seen[-1]["status"] == "COMPLETED", seqs
    assert out["got"] == seen[-1] == out["result"]
    assert out["sleeper"]["status"] == "CANCELLED"
    assert out["cancelled"]["task_id"] == out["sleeper"]["task_id"]
    assert isinstance(out["batch"][0], dict) and isinstance(out["batch"][1], InvalidInput)
    listed = {s["task_id"] for s in out["listed"]}
    assert {out["snap"]["task_id"], out["sleeper"]["task_id"]} <= listed
    assert "demo.count" in {t["name"] for t in out["types"]}


def test_every_method_from_plain_sync_code(remote: GatewayProcess, token: str) -> None:
    with Client(remote.url, token, retry=RetryPolicy(attempts=2)) as client:
        check(exercise(client))
        # Leaving follow early closes its socket; the client goes on working.
        snap = client.submit("demo.count", {"steps": 3, "delay": 0.05})
        for first in client.follow(snap["task_id"]):
            assert first["task_id"] == snap["task_id"]
            break
        assert client.result(snap["task_id"], wait=30)["status"] == "COMPLETED"
    with pytest.raises(RuntimeError):
        client.get(snap["task_id"])  # closed


def test_works_inside_a_thread_whose_loop_is_running(remote: GatewayProcess, token: str) -> None:
    """As in Jupyter, or a sync function called from async code: ``asyncio.run`` would refuse
    there ("cannot be called from a running event loop"); the client runs its own loop."""

    async def notebook_cell() -> tuple[dict[str, Any], str]:
        loop = asyncio.get_running_loop()
        assert loop.is_running()
        naive = asyncio.sleep(0)
        with pytest.raises(RuntimeError):
            asyncio.run(naive)  # what a naive sync wrapper would do
        naive.close()
        with Client(remote.url, token) as client:
            return exercise(client), threading.current_thread().name

    out, thread = asyncio.run(notebook_cell())
    check(out)
    assert thread == threading.current_thread().name
