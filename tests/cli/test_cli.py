"""The ``taskgate`` command as a user meets it: ``up`` end to end, restart, clean stop, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.upstack import Up, alive, clean_env, http, run_cli
from tests.support import wait_until


@pytest.mark.timeout(240)
def test_up_runs_the_whole_path_survives_restart_and_leaves_nothing(tmp_path: Path) -> None:
    up = Up(tmp_path / "data")
    data_dir = up.data_dir
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
    up2 = Up(data_dir, up.port)
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
