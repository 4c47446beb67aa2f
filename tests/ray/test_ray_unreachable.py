"""A Ray cluster that does not answer (issue 19): a worker whose ``TASKGATE_RAY_ADDRESS`` names
a port nothing listens on. Connecting is tried a few times (worker/ray_engine.py), then the run
is a retryable failure (``RayUnavailable``) under the task's own policy: without one the task
ends FAILED with a clear error, with one it runs again, and completes once the cluster is up."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiohttp.test_utils import TestClient

pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'taskgate[ray]')")

from tests.ray.conftest import LOOPBACK, RAY_TASKS, RayHead
from tests.ray.helpers import Connect, submit, wait_event
from tests.support import RedisServer, base_env
from worker import ray_local

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def gcs_port() -> int:
    """Free now; a head is started on it only by the test that brings the cluster up."""
    return ray_local.free_port()


@pytest.fixture(scope="module")
def env(redis_server: RedisServer, gcs_port: int) -> dict[str, str]:
    return base_env(
        redis_server.url,
        f"tg-raydown-{uuid.uuid4().hex[:8]}:",
        TASKGATE_RAY_ADDRESS=f"127.0.0.1:{gcs_port}",
        TASKGATE_TASK_MODULES=RAY_TASKS,
        **LOOPBACK,
    )


async def test_without_a_retry_policy_the_task_fails_with_a_clear_error(
    http: TestClient, sockets: Connect, gcs_port: int
) -> None:
    client, task_id = await submit(http, sockets, "tray.waits", {"seconds": 1})
    final = await client.wait_terminal(task_id, timeout=60)
    assert final["status"] == "FAILED", final
    assert final["error"]["type"] == "RayUnavailable", final
    message = final["error"]["message"]
    assert f"could not connect to the Ray cluster at 127.0.0.1:{gcs_port}" in message, message
    assert "3 tries" in message and "nothing answers" in message, message


async def test_with_a_retry_policy_the_task_runs_again_and_completes_once_the_cluster_is_up(
    http: TestClient, sockets: Connect, env: dict[str, str], gcs_port: int
) -> None:
    client, task_id = await submit(http, sockets, "tray.patient", {})
    retrying = await wait_event(client, task_id, lambda e: e["status"] == "RETRYING", 60)
    assert retrying["error"]["type"] == "RayUnavailable", retrying
    # The cluster comes up on the port the worker names; no one touches the worker or the task.
    head = await asyncio.to_thread(RayHead, env, 2, gcs_port)
    await asyncio.to_thread(head.start)
    try:
        final = await client.wait_terminal(task_id, timeout=90)
        assert final["status"] == "COMPLETED", final
        assert final["result"]["attempt"] == final["attempt"] >= 2, final
    finally:
        await asyncio.to_thread(head.stop)
