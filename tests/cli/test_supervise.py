"""``taskgate up`` supervises its children and owns its data folder, with real processes.

A worker or redis-server killed under ``up`` is reaped, logged and restarted, and the stack
serves again; a child that keeps dying stops everything with a non-zero exit; a second ``up``
on the same data folder is refused before it touches anything there. Every kill is by the pid
the supervisor logged, never by a name pattern; every wait has a bound.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.cli.datalock import LOCK_FILE
from gateway.cli.embedded import SECRET_FILE
from gateway.cli.supervisor import backoff_delay, describe_exit
from tests.cli.upstack import Up, alive, descendants, http, run_cli
from tests.support import wait_until

COUNT = {"task": "demo.count", "input": {"steps": 2, "delay": 0.01}}


def completes(up: Up, body: dict[str, Any], timeout: float = 90.0) -> dict[str, Any]:
    """Submit ``body`` (retrying while the stack answers 503) and wait until it completes."""
    deadline = time.monotonic() + timeout
    while True:
        status, snap = http("POST", f"{up.base}/api/tasks", up.token, body)
        if status == 202:
            break
        assert status == 503 and time.monotonic() < deadline, (status, snap)
        time.sleep(0.5)
    while time.monotonic() < deadline:
        status, done = http(
            "GET", f"{up.base}/api/tasks/{snap['task_id']}/result?wait=10", up.token
        )
        if status == 200:
            assert done["status"] == "COMPLETED", done
            return dict(done)
    raise TimeoutError(f"{snap['task_id']} did not complete within {timeout}s")


def ready(up: Up) -> bool:
    status, _ = http("GET", f"{up.base}/readyz", up.token)
    return status == 200


def supervisor_lines(up: Up, name: str) -> list[str]:
    return [line for line in up.text().splitlines() if "taskgate.up: " in line and name in line]


def test_backoff_is_exponential_capped_and_jittered() -> None:
    assert [backoff_delay(n, 0.5, 4.0, lambda: 1.0) for n in (1, 2, 3, 4, 5, 9)] == [
        0.5, 1.0, 2.0, 4.0, 4.0, 4.0,
    ]  # fmt: skip
    assert [backoff_delay(n, 0.5, 4.0, lambda: 0.0) for n in (1, 2, 3)] == [0.25, 0.5, 1.0]
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(3) == "exit code 3"


@pytest.mark.timeout(240)
def test_killed_worker_is_reaped_logged_restarted_and_serves(tmp_path: Path) -> None:
    up = Up(tmp_path / "data")
    try:
        wait_until(lambda: ready(up), timeout=60, step=0.5)
        old = up.child_pid("worker-fast")
        pool = descendants(old)
        assert pool, "the worker's prefork pool"
        os.kill(old, signal.SIGKILL)
        wait_until(lambda: "restarted worker-fast (pid" in up.text(), timeout=30)
        new = up.child_pid("worker-fast")
        assert new != old
        lines = supervisor_lines(up, "worker-fast")
        print("\n".join(lines))
        assert any(f"worker-fast (pid {old}) died: killed by SIGKILL" in ln for ln in lines)
        # Reaped (no zombie under `up`), and the pool it left behind is gone too.
        assert not Path(f"/proc/{old}").exists()
        wait_until(lambda: not any(alive(p) for p in pool), timeout=10)
        assert new in descendants(up.proc.pid)
        done = completes(up, COUNT)
        assert done["result"] == {"counted": 2}
        wait_until(lambda: ready(up), timeout=30, step=0.5)
    finally:
        tree = up.close()
    assert up.proc.returncode == 0
    wait_until(lambda: not any(alive(p) for p in tree), timeout=20)


@pytest.mark.timeout(240)
def test_killed_redis_is_restarted_on_its_files_and_the_gateway_answers_again(
    tmp_path: Path,
) -> None:
    up = Up(tmp_path / "data")
    tree: set[int] = set()
    try:
        before = completes(up, COUNT)
        time.sleep(1.5)  # past `appendfsync everysec`: the record is on disk
        old = up.child_pid("redis")
        os.kill(old, signal.SIGKILL)
        wait_until(lambda: "restarted redis (pid" in up.text(), timeout=30)
        lines = supervisor_lines(up, "redis")
        print("\n".join(lines))
        assert any(f"redis (pid {old}) died: killed by SIGKILL" in ln for ln in lines)
        assert not Path(f"/proc/{old}").exists()
        wait_until(lambda: ready(up), timeout=60, step=0.5)
        status, again = http("GET", f"{up.base}/api/tasks/{before['task_id']}", up.token)
        assert status == 200 and again["status"] == "COMPLETED"
        assert completes(up, COUNT)["result"] == {"counted": 2}
        tree = up.interrupt(signal.SIGTERM)  # SIGTERM stops it all as cleanly as Ctrl-C
    finally:
        tree |= up.close()
    assert up.proc.returncode == 0
    wait_until(lambda: not any(alive(p) for p in tree), timeout=20)


@pytest.mark.timeout(240)
def test_a_child_that_keeps_dying_stops_everything_with_a_clear_message(tmp_path: Path) -> None:
    up = Up(tmp_path / "data")
    tree: set[int] = set()
    try:
        killed: list[int] = []
        for _ in range(5):
            wait_until(
                lambda: up.child_pid("worker-heavy") not in killed or up.proc.poll() is not None,
                timeout=30,
            )
            tree |= descendants(up.proc.pid)
            pid = up.child_pid("worker-heavy")
            killed.append(pid)
            os.kill(pid, signal.SIGKILL)
        up.proc.wait(60)
    finally:
        tree |= up.close()
    text = up.text()
    assert up.proc.returncode == 1, text[-3000:]
    message = (
        r"^taskgate: worker-heavy failed 5 times within 60s \(last: killed by SIGKILL\); stopped"
    )
    assert re.search(message, text, re.M), text[-3000:]
    assert re.search(
        r"CRITICAL taskgate.up: worker-heavy \(pid \d+\) died: killed by SIGKILL", text
    )
    assert "taskgate stopped." not in text
    wait_until(lambda: not any(alive(p) for p in tree), timeout=20)


@pytest.mark.timeout(240)
def test_second_up_on_the_same_data_dir_refuses_and_changes_nothing(tmp_path: Path) -> None:
    up = Up(tmp_path / "data")
    data_dir = up.data_dir
    try:
        secret = (data_dir / SECRET_FILE).read_bytes()
        lock = (data_dir / LOCK_FILE).read_bytes()
        names = sorted(p.relative_to(data_dir) for p in data_dir.rglob("*"))
        started = time.monotonic()
        second = run_cli("up", env=up.env)
        assert second.returncode == 2, second
        assert time.monotonic() - started < 30
        message = second.stderr.strip()
        assert message.count("\n") == 0, message
        assert "TASKGATE_DATA_DIR" in message and "in use by another `taskgate up`" in message
        assert f"(pid {up.proc.pid})" in message
        assert "taskgate is up" not in second.stdout
        assert (data_dir / SECRET_FILE).read_bytes() == secret
        assert (data_dir / LOCK_FILE).read_bytes() == lock
        assert sorted(p.relative_to(data_dir) for p in data_dir.rglob("*")) == names
        # The running one is untouched: its tokens still verify, `taskgate token` too.
        status, _ = http("GET", f"{up.base}/api/tasks", up.token)
        assert status == 200
        token = run_cli("token", "demo", env=up.env).stdout.strip()
        status, _ = http("GET", f"{up.base}/api/tasks", token)
        assert status == 200
        assert [p for p in descendants(up.proc.pid) if _is_redis(p)] == [up.child_pid("redis")]
    finally:
        tree = up.close()
    assert up.proc.returncode == 0
    wait_until(lambda: not any(alive(p) for p in tree), timeout=20)


def _is_redis(pid: int) -> bool:
    out = subprocess.run(["ps", "-o", "comm=", "-p", str(pid)], capture_output=True, text=True)
    return "redis-server" in out.stdout
