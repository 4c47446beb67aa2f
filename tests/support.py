"""Helpers for tests against real parts: redis-server, Celery workers, Socket.IO clients."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import socketio

from gateway.embedded import find_redis_server, free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
SECRET = "test-secret-" + "x" * 40


class RedisServer:
    """A real redis-server on loopback, in a folder of its own."""

    def __init__(self, data_dir: Path, port: int | None = None, appendonly: bool = True) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            find_redis_server(), "--bind", "127.0.0.1", "--port", str(self.port),
            "--dir", str(self.data_dir), "--save", "", "--daemonize", "no",
            "--appendonly", "yes" if self.appendonly else "no",
        ]  # fmt: skip
        log = open(self.data_dir / "redis.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for_port(self.port, 10, self.proc)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def base_env(redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("TASKGATE_", "CELERY_", "CORS_"))
    }
    env.update(
        {
            "TASKGATE_REDIS_URL": redis_url,
            "TASKGATE_SECRET": SECRET,
            "TASKGATE_KEY_PREFIX": prefix,
            "TASKGATE_LOG_LEVEL": "INFO",
            "PYTHONPATH": str(ROOT),
        }
    )
    env.update(extra)
    return env


class CeleryWorker:
    """An unmodified ``celery -A worker worker`` in its own process group."""

    def __init__(
        self,
        env: Mapping[str, str],
        log_dir: Path,
        queues: str = "fast,heavy",
        concurrency: int = 2,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.env = dict(env)
        self.name = f"w{uuid.uuid4().hex[:8]}"
        self.log = log_dir / f"{self.name}.log"
        self.queues = queues
        self.concurrency = concurrency
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> CeleryWorker:
        argv = [
            sys.executable, "-m", "celery", "-A", "worker", "worker",
            "-Q", self.queues, "-c", str(self.concurrency), "-n", f"{self.name}@%h",
            "--loglevel", "INFO", "--without-mingle", "--without-gossip", *self.extra_args,
        ]  # fmt: skip
        out = open(self.log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
            start_new_session=True,
        )  # fmt: skip
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log.read_text()[-3000:]}")
            if b" ready." in self.log.read_bytes():
                return self
            time.sleep(0.1)
        raise TimeoutError(f"worker not ready after {timeout}s:\n{self.log.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self.proc = None

    def pool_pids(self) -> list[int]:
        """Pids of the prefork pool's children."""
        assert self.proc is not None
        out = subprocess.run(
            ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True, check=False
        )
        return [int(p) for p in out.stdout.split()]


class SocketClient:
    """A python-socketio client that records every ``task`` event per task id."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.all_events: list[dict[str, Any]] = []
        self.heartbeats: list[dict[str, Any]] = []
        self._changed = asyncio.Event()

        @self.sio.on("task")
        async def on_task(data: dict[str, Any]) -> None:
            self.events[data["task_id"]].append(data)
            self.all_events.append(data)
            self._changed.set()

        @self.sio.on("heartbeat")
        async def on_heartbeat(data: dict[str, Any]) -> None:
            self.heartbeats.append(data)
            self._changed.set()

    async def connect(self) -> SocketClient:
        await self.sio.connect(
            self.url, auth={"token": self.token}, transports=["websocket"], wait_timeout=10
        )
        return self

    async def call(self, event: str, data: Any, timeout: float = 10.0) -> Any:
        return await self.sio.call(event, data, timeout=timeout)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def wait_terminal(self, task_id: str, timeout: float = 20.0) -> dict[str, Any]:
        terminal = {"COMPLETED", "FAILED", "TIMED_OUT", "CANCELLED"}
        await self.wait_for(
            lambda: any(e["status"] in terminal for e in self.events[task_id]), timeout
        )
        return self.events[task_id][-1]

    async def close(self) -> None:
        await self.sio.disconnect()


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step)
    raise TimeoutError("condition not met in time")


@contextlib.contextmanager
def started(thing: Any) -> Iterator[Any]:
    thing.start()
    try:
        yield thing
    finally:
        thing.stop()
