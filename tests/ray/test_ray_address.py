"""``TASKGATE_RAY_ADDRESS``'s other two forms (issue 19; ``HOST:PORT`` of a head's GCS is what
test_ray_engine.py uses): ``ray://HOST:PORT``, Ray Client through the head's client server,
and ``auto``, the Ray node ``ray start`` left on this machine, found the way Ray finds it (the
address file in Ray's default temporary directory, ``$RAY_TMPDIR/ray``). For each, a real
Celery worker runs ``demo.ray_primes`` and a cancel on the module's real head (2 CPUs)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'taskgate[ray]')")

from tests.ray.conftest import RayHead, ray_env
from tests.ray.helpers import Connect, cancel_mid_run, submit
from tests.support import CeleryWorker, RedisServer, started
from worker import ray_local

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        not ray_local.has_ray_client(),
        reason="Ray Client is not installed (pip install 'taskgate[ray]' brings ray[client])",
    ),
]


@pytest.fixture(scope="module", params=["ray-client", "auto"])
def form(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def env(redis_server: RedisServer, ray_head: RayHead, form: str) -> dict[str, str]:
    if form == "ray-client":
        named = {"TASKGATE_RAY_ADDRESS": ray_head.client_address}
    else:
        named = {"TASKGATE_RAY_ADDRESS": "auto", **ray_head.default_env}
    return ray_env(redis_server.url, "tg-rayaddr", **named)


@pytest.fixture(scope="module")
def celery_worker(env: dict[str, str], log_dir: Path) -> Iterator[CeleryWorker]:
    with started(CeleryWorker(env, log_dir, queues="fast,heavy")) as worker:
        yield worker


def client_servers(head: RayHead) -> list[Path]:
    """The logs of the servers the head's Ray Client proxy started, one per client connected
    (``ray_client_server_<port>.out``; the proxy's own has no port)."""
    return sorted(head.dir.glob("ray/session_*/logs/ray_client_server_*.out"))


async def test_ray_primes_completes_on_the_cluster_the_address_names(
    http: TestClient,
    sockets: Connect,
    ray_head: RayHead,
    form: str,
    celery_worker: CeleryWorker,
    tmp_path: Path,
) -> None:
    before = await asyncio.to_thread(client_servers, ray_head)
    client, task_id = await submit(
        http, sockets, "demo.ray_primes", {"limit": 1_000_000, "parts": 2}
    )
    # Up to 3 connects (each pool process is a client; Ray's client server fails a session's
    # start now and then, after 30 s: ray-project/ray#63202).
    final = await client.wait_terminal(task_id, timeout=110)
    assert final["status"] == "COMPLETED", (final.get("error"), final)
    assert final["result"] == {"limit": 1_000_000, "parts": 2, "primes": 78498}
    assert final["progress"]["percent"] == 100.0
    assert any(
        e["status"] == "RUNNING" and 0 < e["progress"]["percent"] < 100
        for e in client.events[task_id]
    ), client.events[task_id]
    # It ran on this head (its GCS), reached the way the address says.
    out = tmp_path / "where.json"
    client, task_id = await submit(http, sockets, "tray.where", {"out": str(out), "hold": 0})
    final = await client.wait_terminal(task_id, timeout=60)
    assert final["status"] == "COMPLETED", final
    where = json.loads(await asyncio.to_thread(out.read_text))
    assert where["gcs"] == ray_head.address, where
    log = await asyncio.to_thread(celery_worker.log.read_text)
    if form == "ray-client":
        assert f"connected to Ray at {ray_head.client_address}" in log
        # Through the client server: it started a server for each pool process that connected.
        assert len(await asyncio.to_thread(client_servers, ray_head)) > len(before)
    else:
        assert "connected to Ray at auto" in log


async def test_a_cancel_reaches_the_ray_work(
    http: TestClient, sockets: Connect, ray_driver: Any
) -> None:
    await cancel_mid_run(http, sockets, ray_driver, first_progress_s=60)
