"""With ``TASKGATE_RAY_ADDRESS`` unset, a worker's pool processes share ONE local Ray, started
by the first Ray task (worker/ray_local.py), and it goes when the worker goes: its supervisor
and the head's own processes (GCS server, raylet, ...), and its port."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'taskgate[ray]')")

from shared.settings import Settings
from tests.ray.conftest import LOOPBACK, RAY_TASKS, head_processes, processes_under, runs_as
from tests.support import ROOT, CeleryWorker, RedisServer, base_env, dead_pids, wait_until
from worker.celery_app import make_celery
from worker.ray_local import (
    KEEP_GONE,
    START_TIMEOUT_S,
    alive,
    free_port,
    listening,
    wait_listening,
)

pytestmark = pytest.mark.timeout(120)


def running_head(temp_dir: Path) -> dict[str, int]:
    """The GCS server's and the raylet's pids of a head that runs (both alive)."""
    wait_until(lambda: len(head_processes(temp_dir)) == 2, timeout=20, step=0.2)
    pids = head_processes(temp_dir)
    assert all(runs_as(pid, name) for name, pid in pids.items()), pids
    assert processes_under(temp_dir), "no process of the head names its temp dir"
    return pids


def assert_head_gone(temp_dir: Path, port: int, pids: dict[str, int], timeout: float) -> None:
    """Within ``timeout``: nothing listens on the head's port, its GCS server and raylet are
    gone, and no process names its temp dir."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [n for n, pid in pids.items() if runs_as(pid, n)] + processes_under(temp_dir)
        if not left and not listening(port):
            return
        time.sleep(0.2)
    left_now = {n: pid for n, pid in pids.items() if runs_as(pid, n)}
    raise AssertionError(
        f"the head outlived its stop: port {port} listening={listening(port)}, "
        f"{left_now} alive, {processes_under(temp_dir)} name {temp_dir}"
    )


def test_two_pool_processes_share_one_local_ray_that_stops_with_the_worker(
    redis_server: RedisServer, log_dir: Path, tmp_path: Path
) -> None:
    # The worker's own $TMPDIR (short: Ray's sockets live under it), holding the folders of
    # workers gone before it, the oldest first: starting its head removes all but the newest.
    tmp = Path(tempfile.mkdtemp(prefix="tgr-", dir="/tmp"))
    root = tmp / f"taskgate-ray-{os.getuid()}"
    root.mkdir()
    earlier = [root / str(pid) for pid in dead_pids(KEEP_GONE + 1)]
    for age, path in enumerate(reversed(earlier)):
        (path / "ray").mkdir(parents=True)
        os.utime(path, (time.time() - 100 - age, time.time() - 100 - age))
    env = base_env(
        redis_server.url,
        f"tg-rlocal-{uuid.uuid4().hex[:8]}:",
        TASKGATE_TASK_MODULES=RAY_TASKS,
        TASKGATE_RAY_LOCAL_CPUS="2",
        TMPDIR=str(tmp),
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
        head = json.loads((root / str(worker_pid) / "head.json").read_text())
        assert alive(head["pid"])
        assert f"127.0.0.1:{head['port']}" == seen[0]["gcs"], (head, seen)
        temp_dir = root / str(worker_pid) / "ray"
        pids = running_head(temp_dir)
        # The earlier workers' folders: the oldest removed, the newest KEEP_GONE kept.
        assert [p.exists() for p in earlier] == [False] + [True] * KEEP_GONE
    finally:
        worker.stop()
    # The local Ray's supervisor stops the head once the worker's main process is gone, then
    # exits; nothing of the head is left.
    deadline = time.monotonic() + 30
    while alive(head["pid"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(head["pid"]), "the local Ray's supervisor outlived its worker"
    assert_head_gone(temp_dir, head["port"], pids, timeout=10)
    shutil.rmtree(tmp, ignore_errors=True)


def test_the_supervisor_asked_to_stop_stops_its_head_and_exits_0(tmp_path: Path) -> None:
    # Short: Ray's Unix sockets live under it.
    where = Path(tempfile.mkdtemp(prefix="tgsup-", dir="/tmp"))
    port = free_port()
    argv = [sys.executable, "-m", "worker.ray_local", str(os.getpid()), str(port), "1", str(where)]
    with open(tmp_path / "supervisor.log", "ab") as log:
        sup = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
            env={**os.environ, **LOOPBACK},
        )  # fmt: skip
    try:
        assert wait_listening(port, sup, START_TIMEOUT_S), (tmp_path / "supervisor.log").read_text()
        pids = running_head(where / "ray")
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(30) == 0, (tmp_path / "supervisor.log").read_text()[-3000:]
        assert_head_gone(where / "ray", port, pids, timeout=5)
    finally:
        if sup.poll() is None:
            os.killpg(sup.pid, signal.SIGKILL)
            sup.wait(5)
        for pid in processes_under(where / "ray"):  # a head left by a failed test
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(where, ignore_errors=True)
