"""Fixtures of the Ray tests: a real local Ray head per test module (``ray start --head`` on
127.0.0.1 with 2 CPUs, no dashboard, a temporary directory of its own, started and stopped by
worker/ray_local.py's ``start_head`` and ``stop_head``), a
real Celery worker pointed at it with ``TASKGATE_RAY_ADDRESS``, and this test process as one
more Ray driver, to read the cluster's free CPUs.

The session's ``redis_server`` and the root conftest's ``gateway``, ``http`` and ``sockets``
serve these tests unchanged; ``env`` and ``celery_worker`` are this module's (a key prefix of
its own, so no other worker takes these Ray tasks)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.support import CeleryWorker, RedisServer, base_env, started
from worker import ray_local

# Ray's nodes name themselves 127.0.0.1 with this (else the machine's outward address); it must
# be set before ``ray`` is imported, here and in every process of the test.
LOOPBACK = ray_local.LOOPBACK_ENV
RAY_TASKS = "worker.demo,tests.ray.ray_tasks"
os.environ.update(LOOPBACK)


class RayHead:
    """The head ``worker.ray_local`` starts and stops (``start_head``, ``stop_head``), with its
    output in ``head.log`` of a temporary directory of its own, removed when it stops."""

    def __init__(self, env: dict[str, str], cpus: int = 2, port: int | None = None) -> None:
        self.cpus = cpus
        self.port = port or ray_local.free_port()
        # Its Ray Client server (ray://), when Ray Client is installed (the ray extra has it).
        self.client_port = ray_local.free_port() if ray_local.has_ray_client() else None
        # Short: Ray's Unix sockets live under it (107 bytes at most).
        self.dir = Path(tempfile.mkdtemp(prefix="tgray-", dir="/tmp"))
        # Ray's files in <dir>/ray, which is Ray's default with RAY_TMPDIR=<dir>: a process with
        # ``default_env`` finds this head as the one ``ray start`` left (address ``auto``).
        self.env = {**env, **self.default_env}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def client_address(self) -> str:
        assert self.client_port is not None, "Ray Client is not installed"
        return f"ray://127.0.0.1:{self.client_port}"

    @property
    def default_env(self) -> dict[str, str]:
        return {"RAY_TMPDIR": str(self.dir)}

    def start(self) -> RayHead:
        with open(self.dir / "head.log", "ab") as log:
            self.proc = ray_local.start_head(
                self.port,
                self.cpus,
                self.dir / "ray",
                env=self.env,
                stdout=log,
                client_port=self.client_port,
            )
        ports = [self.port] + ([self.client_port] if self.client_port else [])
        if not all(
            ray_local.wait_listening(port, self.proc, ray_local.START_TIMEOUT_S) for port in ports
        ):
            tail = self.log_tail()
            self.stop()  # started() calls stop() only once start() returned
            raise RuntimeError(f"ray head did not start:\n{tail}")
        return self

    def log_tail(self) -> str:
        return (self.dir / "head.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc is None:
            return
        ray_local.stop_head(self.proc)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_head(redis_server: RedisServer) -> Iterator[RayHead]:
    env = base_env(redis_server.url, "unused:", TASKGATE_TASK_MODULES=RAY_TASKS)
    with started(RayHead(env)) as head:
        yield head


def ray_env(redis_url: str, name: str, **named: str) -> dict[str, str]:
    """A worker's environment for the Ray tests: the Ray task modules, quick heartbeats and
    cancel grace, loopback only, and ``named`` (how the cluster is reached)."""
    return base_env(
        redis_url,
        f"{name}-{uuid.uuid4().hex[:8]}:",
        TASKGATE_TASK_MODULES=RAY_TASKS,
        TASKGATE_TASK_HEARTBEAT_S="1",
        TASKGATE_RAY_CANCEL_GRACE_S="1",
        **named,
        **LOOPBACK,
    )


@pytest.fixture(scope="module")
def env(redis_server: RedisServer, ray_head: RayHead) -> dict[str, str]:
    return ray_env(redis_server.url, "tg-ray", TASKGATE_RAY_ADDRESS=ray_head.address)


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


# The first lines of a Ray process's log: ``[2026-01-01 10:00:00,000 I <pid> <tid>] (gcs_server)``
_LOG_PID = re.compile(rb"^\[[^\]]* [A-Z] (\d+) \d+\] \((\w+)\)", re.MULTILINE)


def head_processes(temp_dir: Path) -> dict[str, int]:
    """The pids of a head's GCS server and raylet, as Ray wrote them in its session's logs
    under ``temp_dir`` (``--temp-dir``); empty for one that has not written them yet."""
    found: dict[str, int] = {}
    for name in ("gcs_server", "raylet"):
        for log in sorted(temp_dir.glob(f"session_*/logs/{name}.out")):
            with open(log, "rb") as f:
                match = _LOG_PID.search(f.read(4096))
            if match and match.group(2).decode() == name:
                found[name] = int(match.group(1))
    return found


def runs_as(pid: int, name: str) -> bool:
    """Whether ``pid`` is alive and is still that Ray process (not a pid used again)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return name.encode() in f.read()
    except OSError:
        return False


def processes_under(temp_dir: Path) -> list[int]:
    """The processes whose command line names ``temp_dir`` (a head's GCS server, raylet,
    monitors and agents all do)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if str(temp_dir).encode() in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
    return found
