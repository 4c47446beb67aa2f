"""The client's ``taskgate`` subcommands as a user runs them: real processes against a real
gateway and worker; exit codes by the task's end, JSON lines, Ctrl-C, one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from client import Client
from tests.support import ROOT, GatewayProcess, make_token

TASKGATE = str(Path(sys.executable).with_name("taskgate"))
RUN_TIMEOUT_S = 60.0


def cli_env(gateway: GatewayProcess, token: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKGATE_", "CELERY_"))}
    env.update({"TASKGATE_URL": gateway.url, "TASKGATE_TOKEN": token, **extra})
    return env


def run(env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [TASKGATE, *args], env=dict(env), cwd=ROOT, capture_output=True, text=True,
        timeout=RUN_TIMEOUT_S,
    )  # fmt: skip
    print(proc.stdout, proc.stderr)
    return proc


def lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    err = proc.stderr.strip()
    assert err.startswith("taskgate: ") and "\n" not in err, proc.stderr
    assert "Traceback" not in proc.stderr
    return err


def test_submit_follow_json_prints_every_snapshot_and_exits_0_on_completed(
    remote: GatewayProcess, token: str
) -> None:
    proc = run(
        cli_env(remote, token), "submit", "demo.count", "--input", '{"steps": 6, "delay": 0.02}',
        "--follow", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    snaps = lines(proc.stdout)
    assert [s["seq"] for s in snaps] == list(range(1, len(snaps) + 1))
    assert snaps[0]["status"] == "PENDING" and snaps[-1]["status"] == "COMPLETED"
    assert snaps[-1]["result"] == {"counted": 6}
    assert len({s["task_id"] for s in snaps}) == 1


def test_submit_without_follow_prints_the_id_and_follow_exits_0(
    remote: GatewayProcess, token: str
) -> None:
    env = cli_env(remote, token)
    key = uuid.uuid4().hex
    proc = run(env, "submit", "demo.count", "--input", '{"steps": 2, "delay": 0}',
               "--queue", "heavy", "--priority", "5", "--idempotency-key", key)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    task_id = proc.stdout.strip()
    followed = run(env, "follow", task_id)
    assert followed.returncode == 0
    assert "COMPLETED" in followed.stdout and '"counted":2' in followed.stdout.replace(" ", "")
    assert task_id in followed.stdout
    with Client(remote.url, token) as client:
        assert client.get(task_id)["queue"] == "heavy"
    # --json without --follow: the first snapshot.
    again = run(env, "submit", "demo.count", "--input", "{}", "--countdown", "0", "--json")
    assert again.returncode == 0 and lines(again.stdout)[0]["status"] == "PENDING"


def test_failed_exits_3_with_the_error(remote: GatewayProcess, token: str) -> None:
    proc = run(
        cli_env(remote, token), "submit", "demo.fail",
        "--input", '{"message": "boom at step 1", "after": 1}', "--follow",
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert "FAILED" in proc.stdout and "boom at step 1" in proc.stdout


def test_timed_out_exits_5(remote: GatewayProcess, token: str) -> None:
    """faults.quick_limit has a soft time limit of 1 s of its own."""
    proc = run(
        cli_env(remote, token), "submit", "faults.quick_limit", "--input", '{"seconds": 30}',
        "--follow", "--json",
    )  # fmt: skip
    assert proc.returncode == 5, proc.stderr
    final = lines(proc.stdout)[-1]
    assert final["status"] == "TIMED_OUT" and "time limit" in final["error"]["message"]


def test_cancelled_exits_4_and_cancel_says_so(remote: GatewayProcess, token: str) -> None:
    env = cli_env(remote, token)
    with Client(remote.url, token) as client:
        task_id = client.submit("demo.sleep", {"seconds": 120})["task_id"]
    follower = subprocess.Popen(
        [TASKGATE, "follow", task_id, "--json"], env=env, cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert follower.stdout is not None
        first = json.loads(follower.stdout.readline())  # following: its first snapshot came
        assert first["task_id"] == task_id
        cancel = run(env, "cancel", task_id)
        assert cancel.returncode == 0 and f"cancel asked: {task_id}" in cancel.stdout
        out, err = follower.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert follower.returncode == 4, err
    assert lines(out)[-1]["status"] == "CANCELLED"


def test_ctrl_c_stops_following_says_how_to_cancel_and_exits_130(
    remote: GatewayProcess, token: str
) -> None:
    env = cli_env(remote, token)
    proc = subprocess.Popen(
        [TASKGATE, "submit", "demo.sleep", "--input", '{"seconds": 120}', "--follow", "--json"],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        task_id = json.loads(proc.stdout.readline())["task_id"]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    try:
        assert proc.returncode == 130, err
        assert f"`taskgate cancel {task_id}`" in err and "Traceback" not in err, err
        with Client(remote.url, token) as client:  # it goes on
            assert client.get(task_id)["status"] in {"PENDING", "RUNNING"}
    finally:
        run(env, "cancel", task_id)


def test_tasks_types_and_cancel_of_an_ended_task(remote: GatewayProcess, token: str) -> None:
    env = cli_env(remote, token)
    with Client(remote.url, token) as client:
        done = client.submit("demo.count", {"steps": 1, "delay": 0})["task_id"]
        client.result(done, wait=30)
    listed = run(env, "tasks", "--json")
    assert listed.returncode == 0 and [s["task_id"] for s in lines(listed.stdout)] == [done]
    table = run(env, "tasks", "--status", "COMPLETED")
    assert done in table.stdout and "COMPLETED" in table.stdout
    assert run(env, "tasks", "--status", "RUNNING").stdout == ""
    types = run(env, "types", "--json")
    assert types.returncode == 0
    assert "demo.count" in {t["name"] for t in lines(types.stdout)}
    assert "demo.sleep" in run(env, "types").stdout
    ended = run(env, "cancel", done)
    assert ended.returncode == 0 and "already ended COMPLETED" in ended.stdout


@pytest.mark.parametrize(
    ("args", "env_extra", "expected"),
    [
        (("submit", "demo.report", "--input",
          '{"rows": 1, "columns": ["a"], "options": {"format": "xml"}}'),
         {}, "(field input.options.format)"),
        (("submit", "demo.count", "--input", "{steps: 3}"), {}, "--input is not JSON"),
        (("submit", "demo.count", "--input", "[1]"), {}, "must be a JSON object"),
        (("submit", "no.such", "--follow"), {}, "unknown_task"),
        (("follow", str(uuid.UUID(int=0))), {}, "not_found: no such task"),
        (("cancel", str(uuid.UUID(int=0))), {}, "not_found"),
        (("tasks",), {"TASKGATE_TOKEN": "not-a-token"}, "unauthorized"),
        (("types",), {"TASKGATE_TOKEN": ""}, "set TASKGATE_TOKEN or pass --token"),
        (("tasks",), {"TASKGATE_URL": "ftp://x"}, "TASKGATE_URL"),
    ],
)  # fmt: skip
def test_bad_input_and_auth_exit_2_with_one_line(
    remote: GatewayProcess, token: str, args: tuple[str, ...], env_extra: dict[str, str],
    expected: str,
) -> None:  # fmt: skip
    proc = run(cli_env(remote, token, **env_extra), *args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert expected in one_line_error(proc)


def test_url_and_token_flags_override_the_environment(remote: GatewayProcess, who: str) -> None:
    env = cli_env(remote, "not-a-token", TASKGATE_URL="http://127.0.0.1:1")
    proc = run(env, "tasks", "--url", remote.url, "--token", make_token(who))
    assert proc.returncode == 0, proc.stderr


def test_an_unreachable_gateway_exits_1(token: str) -> None:
    from gateway.cli.embedded import free_port

    env = {**os.environ, "TASKGATE_URL": f"http://127.0.0.1:{free_port()}", "TASKGATE_TOKEN": token}
    proc = run(env, "tasks")
    assert proc.returncode == 1
    assert "unreachable" in one_line_error(proc)
