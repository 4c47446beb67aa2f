"""The in-process manager API and the HTTP routes built on it, against real Redis and workers."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from blockbuster import blockbuster_ctx

from gateway.inprocess import TaskManager
from shared.errors import InvalidInput, NotFound, RateLimited, ResultTimeout, UnknownTask
from shared.settings import Settings
from tests.support import CeleryWorker, auth


def ctx() -> dict[str, str]:
    return {"user_id": f"svc-{uuid.uuid4().hex[:8]}"}


@pytest.fixture
async def manager(settings: Settings, celery_worker: CeleryWorker) -> AsyncIterator[TaskManager]:
    mgr = await TaskManager.connect(settings, {"task_timeout_seconds": 20, "batch_size": 4})
    with blockbuster_ctx():
        yield mgr
    await mgr.close()


async def test_execute_task_returns_the_terminal_snapshot(manager: TaskManager) -> None:
    snap = await manager.execute_task("demo.count", {"steps": 3, "delay": 0}, ctx())
    assert snap["status"] == "COMPLETED" and snap["result"] == {"counted": 3}
    assert snap["queue"] == "fast"


async def test_execute_heavy_task_runs_on_heavy(manager: TaskManager) -> None:
    snap = await manager.execute_heavy_task("demo.count", {"steps": 2, "delay": 0}, ctx())
    assert snap["queue"] == "heavy" and snap["status"] == "COMPLETED"
    with pytest.raises(InvalidInput) as err:
        await manager.execute_heavy_task("demo.fail", {}, ctx())
    assert err.value.details["field"] == "queue"


async def test_execute_dsl_step_merges_parameters_with_input(manager: TaskManager) -> None:
    step = {"task": "demo.count", "parameters": {"steps": 9, "delay": 0}}
    snap = await manager.execute_dsl_task_step(step, {"steps": 2}, ctx())
    assert snap["result"] == {"counted": 2}
    with pytest.raises(UnknownTask):
        await manager.execute_dsl_task_step({"task": "os.system", "parameters": {}}, {}, ctx())
    with pytest.raises(InvalidInput):
        await manager.execute_dsl_task_step({"task": "demo.count", "eta": 5}, {}, ctx())


async def test_failed_task_is_a_snapshot_not_an_exception(manager: TaskManager) -> None:
    snap = await manager.execute_task("demo.fail", {"message": "nope"}, ctx())
    assert snap["status"] == "FAILED" and snap["error"]["message"] == "nope"


async def test_execute_task_times_out_and_task_keeps_running(settings: Settings) -> None:
    mgr = await TaskManager.connect(settings, {"task_timeout_seconds": 0.5})
    try:
        c = ctx()
        with pytest.raises(ResultTimeout) as err:
            await mgr.execute_task("demo.sleep", {"seconds": 3}, c)
        task_id = err.value.details["task_id"]
        assert (await mgr.get_task_result(task_id, c))["status"] in ("PENDING", "RUNNING")
        assert (await mgr.cancel_task(task_id, c))["task_id"] == task_id
        final = await mgr.get_task_result(task_id, c, wait=10)
        assert final["status"] == "CANCELLED"
    finally:
        await mgr.close()


async def test_batch_execute_keeps_order_and_isolates_failures(manager: TaskManager) -> None:
    tasks = [
        {"task": "demo.count", "input": {"steps": 1, "delay": 0}},
        {"task": "no.such.task", "input": {}},
        {"task": "demo.fail", "input": {"message": "bad one"}},
        {"task": "demo.count", "input": {"steps": "x"}},
        {"task": "demo.count", "input_data": {"steps": 2, "delay": 0}},
        {"task": "demo.count", "input": {"steps": 3, "delay": 0}},
    ]
    out = await manager.batch_execute_tasks(tasks, ctx())
    assert [o.get("status") or o["error"]["code"] for o in out] == [
        "COMPLETED", "unknown_task", "FAILED", "invalid_input", "COMPLETED", "COMPLETED",
    ]  # fmt: skip
    assert [o["result"]["counted"] for o in (out[0], out[4], out[5])] == [1, 2, 3]


async def test_batch_execute_beyond_the_submit_bucket_loses_nothing(
    env: dict[str, str], celery_worker: CeleryWorker
) -> None:
    """A bucket of 10 refilled at 10/s, emptied, then 45 items: chunks are cut to the bucket's
    size, those refused with rate_limited are submitted again after their retry_after, and
    none is lost."""
    settings = Settings.from_env(
        {**env, "TASKGATE_SUBMIT_RATE": "10", "TASKGATE_SUBMIT_BURST": "10"}
    )
    mgr = await TaskManager.connect(
        settings,
        {"task_timeout_seconds": 30, "batch_size": 20, "rate_limit_requests_per_second": 1000},
    )
    try:
        tasks = [{"task": "demo.count", "input": {"steps": 1, "delay": 0}}] * 45
        who = ctx()
        # Empty the bucket first: the batch's first chunk is refused and must be sent again.
        drained = await mgr.submit_many(who["user_id"], tasks[:10])
        assert all(not isinstance(a, Exception) for a in drained)
        with pytest.raises(RateLimited):
            await mgr.submit_many(who["user_id"], tasks[:10])
        out = await mgr.batch_execute_tasks(tasks, who)
        assert [o.get("status") for o in out] == ["COMPLETED"] * 45, [
            o for o in out if o.get("status") != "COMPLETED"
        ][:3]
        assert len({o["task_id"] for o in out}) == 45
    finally:
        await mgr.close()


async def test_get_task_result_of_someone_else_is_not_found(manager: TaskManager) -> None:
    snap = await manager.execute_task("demo.count", {"steps": 1, "delay": 0}, ctx())
    with pytest.raises(NotFound):
        await manager.get_task_result(snap["task_id"], ctx())


async def test_queue_worker_and_health_info(manager: TaskManager) -> None:
    queues = await manager.get_queue_info()
    assert [q["name"] for q in queues["queues"]] == ["fast", "heavy"]
    assert all(isinstance(q["depth"], int) for q in queues["queues"])
    workers = (await manager.get_worker_stats())["workers"]
    assert workers, "the session's worker answers inspect"
    assert {"fast", "heavy"} <= set(workers[0]["queues"])
    health = await manager.get_system_health()
    assert health["status"] == "ok" and health["workers"] >= 1


async def test_priority_overtakes_queued_work(
    env: dict[str, str], log_dir: Path, redis_server: object
) -> None:
    """One worker, one process: while it is busy, queue ten priority-0 tasks, then one
    priority-9 task. The high one starts before every low one."""
    extra = {"TASKGATE_QUEUES": "fast,heavy,prio", "TASKGATE_ROUTES": "demo.count=prio"}
    settings = Settings.from_env({**env, **extra})
    worker = CeleryWorker({**env, **extra}, log_dir, queues="prio", concurrency=1).start()
    mgr = await TaskManager.connect(settings, {"task_timeout_seconds": 60})
    try:
        c = ctx()
        blocker = await mgr.submit(
            c["user_id"], {"task": "demo.count", "input": {"steps": 1, "delay": 1.5}}
        )
        await asyncio.sleep(0.5)  # the worker has taken the blocker
        lows = [
            await mgr.submit(
                c["user_id"],
                {"task": "demo.count", "input": {"steps": 1, "delay": 0.05}, "priority": 0},
            )
            for _ in range(10)
        ]
        high = await mgr.submit(
            c["user_id"],
            {"task": "demo.count", "input": {"steps": 1, "delay": 0.05}, "priority": 9},
        )
        assert (await mgr.get_queue_info())["queues"][2]["depth"] >= 10
        done = [await mgr.get_task_result(t["task_id"], c, wait=30) for t in [blocker, high, *lows]]
        assert all(d["status"] == "COMPLETED" for d in done)
        high_start = done[1]["started_at"]
        assert high_start is not None
        assert all(high_start < d["started_at"] for d in done[2:])
    finally:
        await mgr.close()
        worker.stop()


async def test_http_batch_answers_in_order(http: TestClient) -> None:
    user = f"b-{uuid.uuid4().hex[:8]}"
    body = {
        "tasks": [
            {"task": "demo.count", "input": {"steps": 1, "delay": 0}},
            {"task": "os.system", "input": {}},
            {"task": "demo.count", "input": {"steps": 2, "delay": 0}, "priority": 3},
        ]
    }
    resp = await http.post("/api/tasks/batch", json=body, headers=auth(user))
    assert resp.status == 202
    items = (await resp.json())["tasks"]
    assert "task_id" in items[0] and items[1]["error"]["code"] == "unknown_task"
    assert "task_id" in items[2]
    for item in (items[0], items[2]):
        resp = await http.get(f"/api/tasks/{item['task_id']}/result?wait=20", headers=auth(user))
        assert resp.status == 200 and (await resp.json())["status"] == "COMPLETED"
    resp = await http.post("/api/tasks/batch", json={"tasks": []}, headers=auth(user))
    assert resp.status == 422
    listed = (await (await http.get("/api/tasks", headers=auth(user))).json())["tasks"]
    assert len(listed) == 2


async def test_http_result_wait_times_out_with_408(http: TestClient) -> None:
    user = f"r-{uuid.uuid4().hex[:8]}"
    resp = await http.post(
        "/api/tasks", json={"task": "demo.sleep", "input": {"seconds": 5}}, headers=auth(user)
    )
    task_id = (await resp.json())["task_id"]
    resp = await http.get(f"/api/tasks/{task_id}/result?wait=0.3", headers=auth(user))
    assert resp.status == 408 and (await resp.json())["error"]["code"] == "timeout"
    resp = await http.get(f"/api/tasks/{task_id}/result?wait=abc", headers=auth(user))
    assert resp.status == 400
    await http.delete(f"/api/tasks/{task_id}", headers=auth(user))


async def test_http_queues_workers_and_metrics(http: TestClient) -> None:
    user = f"m-{uuid.uuid4().hex[:8]}"
    queues = await (await http.get("/api/queues", headers=auth(user))).json()
    assert {q["name"] for q in queues["queues"]} == {"fast", "heavy"}
    workers = await (await http.get("/api/workers", headers=auth(user))).json()
    assert workers["workers"] and "active" in workers["workers"][0]
    await http.post(
        "/api/tasks", json={"task": "demo.count", "input": {"steps": 1}}, headers=auth(user)
    )
    text = await (await http.get("/metrics")).text()
    assert 'taskgate_tasks_submitted_total{task="demo.count"} 1' in text
    assert 'taskgate_queue_depth{queue="fast"}' in text
    assert "taskgate_relay_connected 1" in text
    assert 'route="/api/queues",status="200"' in text


async def test_batch_records_equal_single_records(env: dict[str, str]) -> None:
    """The batch script writes the same record a single submit does (no worker consumes this
    prefix, so the records stay PENDING and can be compared whole)."""
    settings = Settings.from_env({**env, "TASKGATE_KEY_PREFIX": f"cmp-{uuid.uuid4().hex[:6]}:"})
    mgr = await TaskManager.connect(settings)
    try:
        who = "cmp-user"
        single = await mgr.submit(who, {"task": "demo.count", "input": {"steps": 2}})
        answers = await mgr.submit_many(
            who,
            [
                {"task": "demo.count", "input": {"steps": 2}},
                {"task": "demo.sleep", "input": {"seconds": 1}, "queue": "heavy", "priority": 7},
            ],
        )
        batch = [a for a in answers if isinstance(a, dict)]
        assert len(batch) == 2
        for answer in batch:
            stored = await mgr.get(who, answer["task_id"])
            assert stored == answer  # what the batch answered is what Redis holds
        assert batch[1]["queue"] == "heavy" and batch[1]["task"] == "demo.sleep"

        def shape(task_id: str) -> dict[bytes, bytes]:
            raw = mgr.records.client.hgetall(settings.keys.task(task_id))
            return raw  # type: ignore[return-value]

        one = await shape(single["task_id"])
        two = await shape(batch[0]["task_id"])
        # Each call is a trace of its own: the ids differ, both are W3C trace ids.
        skip = {b"task_id", b"created_at", b"trace_id"}
        for raw in (one, two):
            assert re.fullmatch(rb'"[0-9a-f]{32}"', raw[b"trace_id"]), raw

        def same(raw: dict[bytes, bytes]) -> dict[bytes, bytes]:
            # A field stored as null reads the same as one never stored.
            return {k: v for k, v in raw.items() if k not in skip and v != b"null"}

        assert same(one) == same(two)
        depth = (await mgr.get_queue_info())["queues"]
        assert [q["depth"] for q in depth] == [2, 1]
    finally:
        await mgr.close()
