"""With ``TASKGATE_RAY_ADDRESS`` unset, a worker's pool processes share ONE local Ray, started
by the first Ray task (worker/ray_local.py), and it goes when the worker goes."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'taskgate[ray]')")

from shared.settings import Settings
from tests.ray.conftest import LOOPBACK, RAY_TASKS
from tests.support import CeleryWorker, RedisServer, base_env, wait_until
from worker.celery_app import make_celery
from worker.ray_local import folder

pytestmark = pytest.mark.timeout(120)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_two_pool_processes_share_one_local_ray_that_stops_with_the_worker(
    redis_server: RedisServer, log_dir: Path, tmp_path: Path
) -> None:
    env = base_env(
        redis_server.url,
        f"tg-rlocal-{uuid.uuid4().hex[:8]}:",
        TASKGATE_TASK_MODULES=RAY_TASKS,
        TASKGATE_RAY_LOCAL_CPUS="2",
        **LOOPBACK,
    )
    worker = CeleryWorker(env, log_dir, queues="fast", concurrency=2).start()
    try:
        app = make_celery(Settings.from_env(env))
        outs = [tmp_path / f"where-{i}.json" for i in range(2)]
        for out in outs:
            app.send_task("tray.where", kwargs={"out": str(out), "hold": 2.0}, queue="fast")
        wait_until(lambda: all(o.exists() for o in outs), timeout=90, step=0.2)
        seen = [json.loads(o.read_text()) for o in outs]
        assert seen[0]["gcs"] == seen[1]["gcs"], seen  # one cluster
        assert seen[0]["job"] != seen[1]["job"], seen  # two drivers: both pool processes
        assert seen[0]["gcs"].startswith("127.0.0.1:"), seen
        assert worker.proc is not None
        worker_pid = worker.proc.pid
        head = json.loads((folder(worker_pid) / "head.json").read_text())
        assert _alive(head["pid"])
    finally:
        worker.stop()
    # The local Ray's supervisor stops the head once the worker's main process is gone.
    deadline = time.monotonic() + 30
    while _alive(head["pid"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(head["pid"]), "the local Ray outlived its worker"
    shutil.rmtree(folder(worker_pid), ignore_errors=True)
