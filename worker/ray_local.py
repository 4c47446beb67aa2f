"""A local Ray for development, when ``TASKGATE_RAY_ADDRESS`` is unset: ONE per Celery worker,
shared by all its pool processes, started by the first that runs a Ray task.

``ray.init()`` with no address would start a cluster inside each pool process (and stop it with
that process). Instead the first pool process, under a file lock, starts
``python -m worker.ray_local <worker pid> <port> <cpus> <dir>``: a small supervisor running
``ray start --head --block`` on 127.0.0.1 with its own temporary directory (in a process group
of its own), and stopping it (every Ray process of that head) once the Celery worker's main
process is gone, then exiting. The lock's folder keeps the head's address; the other pool
processes find it there and connect to it. ``TASKGATE_RAY_LOCAL_CPUS`` sets the local head's
CPUs (default: this machine's).

The folder is ``$TMPDIR/taskgate-ray-<uid>/<worker pid>``, Ray's files in its ``ray`` (or in
``/tmp/taskgate-ray-<uid>-<worker pid>`` when that path is too long for Ray's Unix sockets).
Ray's logs stay there after the worker stops (to look at after a crash); a worker starting its
head removes the folders of workers gone, all but the newest ``KEEP_GONE``.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

# Ray's nodes then name themselves 127.0.0.1 (Ray picks the machine's outward address
# otherwise); set in the pool process before ``ray`` is imported, and for the head.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
CPUS_ENV = "TASKGATE_RAY_LOCAL_CPUS"
START_TIMEOUT_S = 60.0
# How long a head has to stop its processes after SIGTERM before its group is killed.
STOP_GRACE_S = 15.0
# The folders of workers gone kept (Ray's logs of the last runs), the newest first.
KEEP_GONE = 3


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


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _gone(entry: Path) -> bool:
    """Whether ``entry`` is the folder of a worker gone whose head's supervisor is gone too
    (a supervisor still stopping its head keeps its folder)."""
    if not entry.name.isdigit() or not entry.is_dir() or alive(int(entry.name)):
        return False
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        if alive(int(json.loads((entry / "head.json").read_text())["pid"])):
            return False
    return True


def prune(root: Path, keep: int = KEEP_GONE) -> list[Path]:
    """Remove the folders under ``root`` of workers gone (``_gone``), all but the newest
    ``keep``, with the short Ray directory each may have had (``short_ray_dir``); returns
    the folders removed. Errors are skipped: this never stops a head from starting."""
    try:
        gone = [entry for entry in root.iterdir() if _gone(entry)]
    except OSError:
        return []

    def changed(entry: Path) -> float:
        try:
            return entry.stat().st_mtime
        except OSError:
            return 0.0

    gone.sort(key=changed, reverse=True)
    for entry in gone[keep:]:
        shutil.rmtree(entry, ignore_errors=True)
        shutil.rmtree(short_ray_dir(int(entry.name)), ignore_errors=True)
    return gone[keep:]


def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait until 127.0.0.1:``port`` listens (True), or ``proc`` exits or ``timeout`` passes
    (False)."""
    deadline = time.monotonic() + timeout
    while not listening(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def has_ray_client() -> bool:
    """Whether Ray Client's dependency (``grpcio``, ``ray[client]``) is installed."""
    return importlib.util.find_spec("grpc") is not None


def start_head(
    port: int,
    cpus: int | str,
    temp_dir: Path,
    env: Mapping[str, str] | None = None,
    stdout: IO[bytes] | None = None,
    client_port: int | None = None,
) -> subprocess.Popen[bytes]:
    """``ray start --head --block`` on 127.0.0.1:``port``, no dashboard, Ray's files under
    ``temp_dir`` (short: Ray's Unix sockets live under it), in a process group of its own
    (which ``stop_head`` ends). ``env`` defaults to this process's; output to ``stdout`` (with
    stderr), else inherited.

    With Ray Client installed a head always runs its client server, on 10001 unless told: on
    ``client_port`` here, else a free port, so that two heads on one machine do not clash."""
    if client_port is not None and not has_ray_client():
        raise ValueError("a Ray Client port needs Ray Client: pip install 'taskgate[ray]'")
    argv = [
        sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
        "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", str(cpus),
        "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", str(temp_dir),
    ]  # fmt: skip
    if has_ray_client():
        argv += ["--ray-client-server-port", str(client_port or free_port())]
    return subprocess.Popen(
        argv,
        env={**(os.environ if env is None else env), **LOOPBACK_ENV},
        stdout=stdout,
        stderr=subprocess.STDOUT if stdout is not None else None,
        start_new_session=True,
    )


def stop_head(head: subprocess.Popen[bytes], grace: float = STOP_GRACE_S) -> None:
    """Stop a head from ``start_head``: SIGTERM (``ray start --block`` then stops the head's
    processes), up to ``grace`` seconds, then SIGKILL to whatever is left of its group."""
    if head.poll() is None:
        head.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(head.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        head.wait(5)


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
            if alive(known["pid"]) and listening(known["port"]):
                return f"127.0.0.1:{known['port']}"
        prune(where.parent)
        port = free_port()
        cpus = os.environ.get(CPUS_ENV, "").strip() or str(os.cpu_count() or 1)
        log = open(where / "supervisor.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker.ray_local", str(owner), str(port), cpus, str(where)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **LOOPBACK_ENV},
        )  # fmt: skip
        log.close()
        if not wait_listening(port, proc, START_TIMEOUT_S):
            # Its supervisor stops what it started of the head (SIGTERM), then the error.
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(20)
            raise RuntimeError(f"the local Ray did not start (see {where / 'supervisor.log'})")
        state.write_text(json.dumps({"pid": proc.pid, "port": port}))
        return f"127.0.0.1:{port}"


# Ray puts Unix sockets under its temporary directory, ``.../session_<date>_<pid>/sockets/
# plasma_store`` (about 62 bytes more), and a socket's path has at most 107 bytes.
RAY_DIR_MAX = 44


def ray_dir(where: Path, owner: int) -> Path:
    """Ray's temporary directory for the head of ``owner``: ``where/ray``, or if that is too
    long for Ray's sockets (a deep ``$TMPDIR``), ``short_ray_dir(owner)``."""
    wanted = where / "ray"
    if len(str(wanted)) <= RAY_DIR_MAX:
        return wanted
    return short_ray_dir(owner)


def short_ray_dir(owner: int) -> Path:
    """Ray's temporary directory for the head of ``owner`` when ``where/ray`` is too long."""
    return Path("/tmp") / f"taskgate-ray-{os.getuid()}-{owner}"


def supervise(owner: int, port: int, cpus: str, where: Path) -> int:
    """Run the head until ``owner`` (the Celery worker) is gone, or this is asked to stop;
    then stop the head (all its processes) and return 0."""
    stopping = False

    def on_term(*_: object) -> None:
        nonlocal stopping
        stopping = True

    # Before the head starts: a stop asked meanwhile still stops it.
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    files = ray_dir(where, owner)
    head = start_head(port, cpus, files)
    while not stopping and alive(owner) and head.poll() is None:
        time.sleep(0.5)
    stop_head(head)
    if where not in files.parents:  # the short one in /tmp: nobody would look for it there
        shutil.rmtree(files, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(supervise(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])))
