"""The ``taskgate`` command as a user meets it: ``up`` end to end, restart, clean stop, errors."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from gateway.cli.embedded import free_port
from tests.support import ROOT, wait_until


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKGATE_", "CELERY_"))}
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli.commands", *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def http(method: str, url: str, token: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def descendants(pid: int) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    kids = {int(p) for p in out.stdout.split()}
    for kid in list(kids):
        kids |= descendants(kid)
    return kids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes, but only its parent can reap it.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


class Up:
    def __init__(self, data_dir: Path, port: int) -> None:
        self.log = data_dir.parent / f"up-{time.monotonic_ns()}.log"
        self.out = open(self.log, "wb")  # noqa: SIM115
        env = clean_env(TASKGATE_DATA_DIR=str(data_dir), TASKGATE_PORT=str(port))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli.commands", "up"], env=env, cwd=ROOT,
            stdout=self.out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.base = f"http://127.0.0.1:{port}"
        wait_until(lambda: b"Ctrl-C stops everything" in self.log.read_bytes(), timeout=60)
        match = re.search(rb"demo token:\s+(\S+)", self.log.read_bytes())
        assert match
        self.token = match.group(1).decode()

    def interrupt(self) -> set[int]:
        """Ctrl-C; returns every process of the tree as it was just before."""
        tree = descendants(self.proc.pid)
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(60)
        self.out.close()
        return tree


@pytest.mark.timeout(240)
def test_up_runs_the_whole_path_survives_restart_and_leaves_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    up = Up(data_dir, port)
    try:
        status, snap = http(
            "POST", f"{up.base}/api/tasks", up.token,
            {"task": "demo.count", "input": {"steps": 3, "delay": 0.05}},
        )  # fmt: skip
        assert status == 202
        task_id = snap["task_id"]
        status, done = http("GET", f"{up.base}/api/tasks/{task_id}/result?wait=30", up.token)
        assert status == 200 and done["status"] == "COMPLETED" and done["result"] == {"counted": 3}
        status, heavy = http(
            "POST",
            f"{up.base}/api/tasks",
            up.token,
            {"task": "demo.primes", "input": {"limit": 1000}},
        )
        status, primes = http(
            "GET", f"{up.base}/api/tasks/{heavy['task_id']}/result?wait=30", up.token
        )
        assert primes["result"] == {"limit": 1000, "primes": 168}
    finally:
        tree = up.interrupt()
    assert up.proc.returncode == 0
    assert len(tree) >= 5, tree  # redis-server, two workers and their pool processes
    wait_until(lambda: not any(alive(p) for p in tree), timeout=20)

    # Same data folder: the record survived (append-only file), read with a token of the new run.
    up2 = Up(data_dir, port)
    try:
        token = run_cli("token", "demo", env=clean_env(TASKGATE_DATA_DIR=str(data_dir))).stdout
        status, again = http("GET", f"{up2.base}/api/tasks/{task_id}", token.strip())
        assert status == 200 and again["status"] == "COMPLETED" and again["seq"] == done["seq"]
        status, _ = http("GET", f"{up2.base}/api/tasks/{task_id}", up.token)
        assert status == 401  # a new run signs with a new secret
    finally:
        tree = up2.interrupt()
    wait_until(lambda: not any(alive(p) for p in tree), timeout=20)


def test_bad_configuration_fails_at_start_with_one_line() -> None:
    result = run_cli("gateway", env=clean_env(TASKGATE_PORT="eighty"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "TASKGATE_PORT" in result.stderr and "eighty" in result.stderr
    result = run_cli("gateway", env=clean_env(TASKGATE_REDIS_URL="redis://127.0.0.1:1/0"))
    assert result.returncode == 2 and "TASKGATE_SECRET" in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr


def test_token_needs_a_secret(tmp_path: Path) -> None:
    result = run_cli("token", "alice", env=clean_env(TASKGATE_DATA_DIR=str(tmp_path)))
    assert result.returncode == 2 and "TASKGATE_SECRET" in result.stderr
    ok = run_cli("token", "alice", env=clean_env(TASKGATE_SECRET="s" * 40))
    assert ok.returncode == 0 and ok.stdout.count(".") == 2
