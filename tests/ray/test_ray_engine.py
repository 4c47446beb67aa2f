"""Task bodies on a real local Ray (issue 19): a real Celery worker takes each task and hands
its body to Ray; the record and the socket see its progress, its end and its result as for any
task. The module's Ray head has 2 CPUs (conftest.py)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'taskgate[ray]')")

from tests.ray.helpers import (
    Connect,
    assert_in_order,
    cancel_mid_run,
    client_user,
    cpus_back,
    cpus_free,
    part_pids,
    submit,
    wait_event,
)
from tests.support import CeleryWorker, auth
from worker.ray_local import alive as ray_local_alive

pytestmark = pytest.mark.timeout(90)


async def test_ray_primes_rolls_up_its_parts_progress_to_100_and_completes_with_the_count(
    http: TestClient, sockets: Connect
) -> None:
    client, task_id = await submit(
        http, sockets, "demo.ray_primes", {"limit": 3_000_000, "parts": 3}
    )
    final = await client.wait_terminal(task_id, timeout=60)
    assert final["status"] == "COMPLETED", final
    assert final["result"] == {"limit": 3_000_000, "parts": 3, "primes": 216816}
    events = client.events[task_id]
    assert_in_order(events)
    # The parts' progress, rolled up: percents between 0 and 100 that only the map's mean
    # gives, with its count of parts done, before the end at 100.
    rolled = [e for e in events if e["status"] == "RUNNING" and e["progress"]["data"]]
    assert rolled, events
    assert all(e["progress"]["data"]["parts"] == 3 for e in rolled)
    assert any(0 < e["progress"]["percent"] < 100 for e in rolled), rolled
    assert final["progress"]["percent"] == 100.0


async def test_cancel_mid_run_ends_cancelled_and_frees_the_ray_tasks(
    http: TestClient, sockets: Connect, ray_driver: Any
) -> None:
    await cancel_mid_run(http, sockets, ray_driver)


async def test_a_killed_ray_worker_is_retried_under_the_tasks_policy(
    http: TestClient, sockets: Connect, celery_worker: CeleryWorker
) -> None:
    client, task_id = await submit(http, sockets, "tray.dies_once", {"seconds": 60})
    running = await wait_event(client, task_id, lambda e: "pid" in e["progress"]["data"], 30)
    pid = running["progress"]["data"]["pid"]
    # The body runs in a Ray worker process, not in the Celery pool.
    assert pid not in await asyncio.to_thread(celery_worker.pool_pids)
    os.kill(pid, signal.SIGKILL)
    final = await client.wait_terminal(task_id, timeout=60)
    assert final["status"] == "COMPLETED", final
    assert final["result"]["attempt"] == 2 and final["attempt"] == 2
    retrying = [e for e in client.events[task_id] if e["status"] == "RETRYING"]
    assert retrying, client.events[task_id]
    assert retrying[0]["error"]["type"] == "RayWorkerLost", retrying[0]
    assert_in_order(client.events[task_id])


async def test_a_killed_part_without_a_retry_policy_fails_with_a_clear_error(
    http: TestClient, sockets: Connect, ray_driver: Any, tmp_path: Path
) -> None:
    await cpus_back(ray_driver)
    client, task_id = await submit(
        http, sockets, "tray.part_dies", {"seconds": 60, "pid_dir": str(tmp_path)}
    )
    pids = await part_pids(tmp_path)  # by part: files "0" and "1"
    # Part 1, while part 0 (in the body's own worker) has 60 s to go: the loss is seen at part
    # 0's next progress call, not after it.
    os.kill(pids[1], signal.SIGKILL)
    final = await client.wait_terminal(task_id, timeout=30)
    assert final["status"] == "FAILED", final
    assert final["error"]["type"] == "RayWorkerLost", final
    assert "died" in final["error"]["message"], final
    await cpus_back(ray_driver)  # the other part was cancelled with it


async def test_the_soft_time_limit_cancels_the_ray_work_and_ends_timed_out(
    http: TestClient, sockets: Connect, ray_driver: Any
) -> None:
    await cpus_back(ray_driver)
    client, task_id = await submit(http, sockets, "tray.forever", {"seconds": 120})
    final = await client.wait_terminal(task_id, timeout=30)
    assert final["status"] == "TIMED_OUT", final
    assert final["error"]["type"] == "TimeLimitExceeded", final
    await cpus_back(ray_driver)  # parts that never look at ctx were forced to stop


async def test_the_hard_time_limit_ends_timed_out_and_ray_ends_the_dead_drivers_tasks(
    http: TestClient, sockets: Connect, ray_driver: Any, celery_worker: CeleryWorker
) -> None:
    await cpus_back(ray_driver)
    client, task_id = await submit(http, sockets, "tray.hard_limit", {"seconds": 120})
    await wait_event(client, task_id, lambda e: e["progress"]["percent"] > 0, 30)
    await cpus_free(ray_driver, 0.0, timeout=10)  # both parts hold a CPU
    # Only a hard limit (3 s): at 3 s the driver is told (the soft signal, worker/runner.py
    # registers the hard limit as the soft one too) and at once Celery kills the pool process
    # that drives the Ray work; whichever of the two records first, the task ends TIMED_OUT
    # by its own 3 s, not the workers' soft limit (300 s).
    final = await client.wait_terminal(task_id, timeout=30)
    assert final["status"] == "TIMED_OUT", final
    assert final["error"]["type"] == "TimeLimitExceeded", final
    assert "time limit (3s) exceeded" in final["error"]["message"], final
    # The parts never look at their context: a cancel the driver had no time to force, or
    # Ray ending the tasks of a driver that died, frees their CPUs long before their 120 s.
    await cpus_back(ray_driver, timeout=30)
    # The worker replaced its pool process; the next Ray task runs (a new driver connects).
    client, task_id = await submit(http, sockets, "tray.waits", {"seconds": 0.2})
    final = await client.wait_terminal(task_id, timeout=60)
    assert final["status"] == "COMPLETED" and final["result"] == {"waited": 0.2}, final


def gone(pids: list[int]) -> bool:
    return not any(ray_local_alive(pid) for pid in pids)


async def test_the_ray_work_of_a_driver_that_died_ends_with_it(
    http: TestClient,
    sockets: Connect,
    ray_driver: Any,
    celery_worker: CeleryWorker,
    tmp_path: Path,
) -> None:
    """The pool process waiting on the Ray work (its driver, and the owner of its Ray tasks) is
    killed outright, as the hard time limit or the OOM killer does: Ray ends the tasks it owned
    (their worker processes go), rather than let them run on for nobody."""
    await cpus_back(ray_driver)
    client, task_id = await submit(
        http, sockets, "tray.part_dies", {"seconds": 60, "pid_dir": str(tmp_path)}
    )
    parts = await part_pids(tmp_path)  # part 0 in the body's own Ray worker, part 1 in another
    for pid in await asyncio.to_thread(celery_worker.pool_pids):
        os.kill(pid, signal.SIGKILL)
    async with asyncio.timeout(30):
        while True:
            if gone(parts):
                break
            await asyncio.sleep(0.2)
    # The run was lost, not ended: the worker runs the task again (docs/RELIABILITY.md 3); a
    # cancel ends that run, and every CPU is free again.
    resp = await http.delete(f"/api/tasks/{task_id}", headers=auth(client_user(client)))
    assert resp.status in (200, 202), await resp.text()
    final = await client.wait_terminal(task_id, timeout=60)
    assert final["status"] == "CANCELLED", final
    await cpus_back(ray_driver, timeout=30)


async def test_a_result_above_the_limit_is_refused_whole(
    http: TestClient, sockets: Connect
) -> None:
    client, task_id = await submit(http, sockets, "tray.big", {"size": 2 * 1024 * 1024})
    final = await client.wait_terminal(task_id, timeout=30)
    assert final["status"] == "FAILED", final
    assert final["error"]["type"] == "ResultTooLarge", final
    assert final.get("result") is None
    client, task_id = await submit(http, sockets, "tray.big", {"size": 1000})
    final = await client.wait_terminal(task_id, timeout=30)
    assert final["status"] == "COMPLETED" and len(final["result"]["blob"]) == 1000, final
