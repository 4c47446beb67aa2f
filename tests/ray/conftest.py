"""Fixtures of the Ray tests: a real local Ray head per test module (``ray start --head`` on
127.0.0.1 with 2 CPUs, no dashboard, a temporary directory of its own, stopped by its PID), a
real Celery worker pointed at it with ``TASKGATE_RAY_ADDRESS``, and this test process as one
more Ray driver, to read the cluster's free CPUs.

The session's ``redis_server`` and the root conftest's ``gateway``, ``http`` and ``sockets``
serve these tests unchanged; ``env`` and ``celery_worker`` are this module's (a key prefix of
its own, so no other worker takes these Ray tasks)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.support import CeleryWorker, RedisServer, base_env, started

# Ray's nodes name themselves 127.0.0.1 with this (else the machine's outward address); it must
# be set before ``ray`` is imported, here and in every process of the test.
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
RAY_TASKS = "worker.demo,tests.ray.ray_tasks"
os.environ.update(LOOPBACK)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _listening(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), 0.5).close()
    except OSError:
        return False
    return True


class RayHead:
    """``ray start --head --block`` in its own process group; ``stop`` ends that group."""

    def __init__(self, env: dict[str, str], cpus: int = 2) -> None:
        self.env = {**env, **LOOPBACK}
        self.cpus = cpus
        self.port = _free_port()
        # Short: Ray's Unix sockets live under it (107 bytes at most).
        self.dir = Path(tempfile.mkdtemp(prefix="tgray-", dir="/tmp"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> RayHead:
        argv = [
            sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
            "--node-ip-address", "127.0.0.1", "--port", str(self.port),
            "--num-cpus", str(self.cpus), "--include-dashboard=false", "--disable-usage-stats",
            "--temp-dir", str(self.dir / "ray"),
        ]  # fmt: skip
        log = open(self.dir / "head.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + 60
        while not _listening(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()  # started() calls stop() only once start() returned
                raise RuntimeError(f"ray head did not start:\n{tail}")
            time.sleep(0.1)
        return self

    def log_tail(self) -> str:
        return (self.dir / "head.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)  # ``--block`` stops the head's processes
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever of its group is left
        self.proc.wait(5)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_head(redis_server: RedisServer) -> Iterator[RayHead]:
    env = base_env(redis_server.url, "unused:", TASKGATE_TASK_MODULES=RAY_TASKS)
    with started(RayHead(env)) as head:
        yield head


@pytest.fixture(scope="module")
def env(redis_server: RedisServer, ray_head: RayHead) -> dict[str, str]:
    return base_env(
        redis_server.url,
        f"tg-ray-{uuid.uuid4().hex[:8]}:",
        TASKGATE_RAY_ADDRESS=ray_head.address,
        TASKGATE_TASK_MODULES=RAY_TASKS,
        TASKGATE_TASK_HEARTBEAT_S="1",
        TASKGATE_RAY_CANCEL_GRACE_S="1",
        **LOOPBACK,
    )


@pytest.fixture(scope="module")
def celery_worker(env: dict[str, str], log_dir: Path) -> Iterator[CeleryWorker]:
    with started(CeleryWorker(env, log_dir, queues="fast,heavy")) as worker:
        yield worker


@pytest.fixture(scope="module")
def ray_driver(ray_head: RayHead) -> Iterator[ModuleType]:
    """``ray``, this process connected to the module's head as a driver of its own."""
    import ray

    ray.init(address=ray_head.address, logging_level="WARNING", log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def free_cpus(ray: Any) -> float:
    return float(ray.available_resources().get("CPU", 0.0))
