"""A local Ray for development, when ``TASKGATE_RAY_ADDRESS`` is unset: ONE per Celery worker,
shared by all its pool processes, started by the first that runs a Ray task.

``ray.init()`` with no address would start a cluster inside each pool process (and stop it with
that process). Instead the first pool process, under a file lock, starts
``python -m worker.ray_local <worker pid> <port> <cpus> <dir>``: a small supervisor running
``ray start --head --block`` on 127.0.0.1 with its own temporary directory, and stopping it
(every Ray process of that head) once the Celery worker's main process is gone. The lock's
folder keeps the head's address; the other pool processes find it there and connect to it.
``TASKGATE_RAY_LOCAL_CPUS`` sets the local head's CPUs (default: this machine's).

The folder is ``$TMPDIR/taskgate-ray-<uid>/<worker pid>``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Ray's nodes then name themselves 127.0.0.1 (Ray picks the machine's outward address
# otherwise); set in the pool process before ``ray`` is imported, and for the head.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
CPUS_ENV = "TASKGATE_RAY_LOCAL_CPUS"
START_TIMEOUT_S = 60.0


def _owner_pid() -> int:
    """The Celery worker's main process: the pool's parent, else this process (solo pool)."""
    try:
        from billiard.process import current_process  # type: ignore[import-untyped]

        if current_process()._parent_pid:  # a prefork pool child
            return os.getppid()
    except Exception:
        pass
    return os.getpid()


def folder(owner: int | None = None) -> Path:
    root = Path(tempfile.gettempdir()) / f"taskgate-ray-{os.getuid()}"
    return root / str(owner if owner is not None else _owner_pid())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def shared_address() -> str:
    """The local head's address (``127.0.0.1:PORT``), started if this worker has none yet."""
    os.environ.update(LOOPBACK_ENV)
    owner = _owner_pid()
    where = folder(owner)
    where.mkdir(parents=True, exist_ok=True)
    state = where / "head.json"
    with open(where / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if state.exists():
            known = json.loads(state.read_text())
            if _alive(known["pid"]) and _listening(known["port"]):
                return f"127.0.0.1:{known['port']}"
        port = _free_port()
        cpus = os.environ.get(CPUS_ENV, "").strip() or str(os.cpu_count() or 1)
        log = open(where / "supervisor.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker.ray_local", str(owner), str(port), cpus, str(where)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **LOOPBACK_ENV},
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _listening(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                # Its supervisor stops what it started of the head (SIGTERM), then the error.
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(20)
                raise RuntimeError(f"the local Ray did not start (see {where / 'supervisor.log'})")
            time.sleep(0.1)
        state.write_text(json.dumps({"pid": proc.pid, "port": port}))
        return f"127.0.0.1:{port}"


def supervise(owner: int, port: int, cpus: str, where: Path) -> int:
    """Run the head until ``owner`` (the Celery worker) is gone, or this is asked to stop."""
    argv = [
        sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
        "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", cpus,
        "--include-dashboard=false", "--disable-usage-stats",
        "--temp-dir", str(where / "ray"),
    ]  # fmt: skip
    head = subprocess.Popen(argv, env={**os.environ, **LOOPBACK_ENV})
    stopping = False

    def on_term(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    while not stopping and _alive(owner) and head.poll() is None:
        time.sleep(0.5)
    if head.poll() is None:
        head.send_signal(signal.SIGTERM)  # ``ray start --block`` stops the head's processes
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(15)
    # Whatever is left of the head (it shares this process group) goes too.
    with contextlib.suppress(ProcessLookupError):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.killpg(os.getpgid(0), signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(supervise(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])))
