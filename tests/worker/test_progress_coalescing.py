"""Progress coalescing on the worker (worker.context): at most TASKGATE_PROGRESS_RATE updates
per second per task are published, the latest winning; ``progress(100)`` and the end are never
held back; a held-back update goes out when its window ends or before the end; ``seq`` rises by
one per published change and ``percent`` never goes back. Real Redis; a real worker and socket
for the end-to-end case."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable

import orjson
import pytest
from aiohttp.test_utils import TestClient

from shared.errors import TaskCancelled
from shared.records import SyncRecords, TransitionCode
from tests.support import SocketClient, auth
from tests.worker.conftest import running_task
from worker.context import Context

Connect = Callable[[str], Awaitable[SocketClient]]


def snapshot(records: SyncRecords, task_id: str) -> dict[str, object]:
    snap = records.snapshot(task_id)
    assert snap is not None
    return dict(snap)


def test_updates_within_a_window_are_held_and_the_latest_goes_out_at_its_end(
    records: SyncRecords,
) -> None:
    task_id = running_task(records)
    ctx = Context(task_id, records, progress_rate=5)  # a 200 ms window
    ctx.progress(10, "first")  # published at once: the window starts here
    assert snapshot(records, task_id)["seq"] == 3
    for pct in range(11, 60):
        ctx.progress(pct, f"at {pct}")
    held = snapshot(records, task_id)
    assert held["seq"] == 3 and held["progress"]["percent"] == 10  # type: ignore[index]
    deadline = time.monotonic() + 5
    while snapshot(records, task_id)["seq"] == 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    after = snapshot(records, task_id)
    # One more update, and it is the latest one: 49 calls cost one publish.
    assert after["seq"] == 4
    assert after["progress"] == {"percent": 59.0, "message": "at 59", "data": {}}


def test_progress_100_and_close_are_never_held_back(records: SyncRecords) -> None:
    task_id = running_task(records)
    ctx = Context(task_id, records, progress_rate=1)  # a 1 s window
    ctx.progress(5)
    ctx.progress(50, "held")
    assert snapshot(records, task_id)["progress"]["percent"] == 5  # type: ignore[index]
    ctx.progress(100, "done")  # at once, and it replaces the held one
    snap = snapshot(records, task_id)
    assert snap["progress"]["percent"] == 100 and snap["seq"] == 4  # type: ignore[index]
    time.sleep(1.2)
    assert snapshot(records, task_id)["seq"] == 4  # the held 50 never came after it
    # close() publishes what is held before the task's end is recorded.
    other = running_task(records)
    ctx = Context(other, records, progress_rate=1)
    ctx.progress(5)
    ctx.progress(70, "last words")
    ctx.close()
    assert snapshot(records, other)["progress"]["message"] == "last words"  # type: ignore[index]


def test_a_cancel_is_seen_while_updates_are_held(records: SyncRecords) -> None:
    task_id = running_task(records)
    ctx = Context(task_id, records, progress_rate=1)
    ctx.progress(1)
    flagged = records.transition(task_id, "cancel", owner="coalesce")
    assert flagged.code == TransitionCode.CANCEL_FLAGGED  # running: flagged, not ended
    time.sleep(0.3)  # past the cancel flag's poll interval
    with pytest.raises(TaskCancelled):
        for pct in range(2, 1000):
            ctx.progress(pct)
            time.sleep(0.001)
    ctx.close()


def test_rate_zero_publishes_every_update(records: SyncRecords) -> None:
    task_id = running_task(records)
    ctx = Context(task_id, records, progress_rate=0)
    for pct in range(1, 21):
        ctx.progress(pct)
    assert snapshot(records, task_id)["seq"] == 2 + 20


async def test_a_tight_loop_task_publishes_few_updates_in_order_and_ends_at_100(
    http: TestClient, sockets: Connect
) -> None:
    """demo.count with no delay calls progress 10,000 times in a few milliseconds."""
    user = f"coalesce-{uuid.uuid4().hex[:6]}"
    client = await sockets(user)
    body = {"task": "demo.count", "input": {"steps": 10000, "delay": 0}}
    resp = await http.post("/api/tasks", json=body, headers=auth(user))
    task_id = (await resp.json())["task_id"]
    final = await client.wait_terminal(task_id)
    assert final["status"] == "COMPLETED" and final["result"] == {"counted": 10000}
    await client.wait_for(lambda: len(client.events[task_id]) >= final["seq"], 10)
    events = client.events[task_id]
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, final["seq"] + 1)), seqs  # every published change, once
    percents = [e["progress"]["percent"] for e in events]
    assert percents == sorted(percents)
    running = [e for e in events if e["status"] == "RUNNING"]
    # RUNNING, then a handful of progress updates (the task took milliseconds), not 10,000.
    assert len(running) < 50, len(running)
    assert running[-1]["progress"]["percent"] == 100.0
    assert orjson.loads(orjson.dumps(final))["progress"]["percent"] == 100.0
