"""Ray from what a user installs (issue 19): the wheel with its ``ray`` extra
(``pip install 'taskgate-….whl[ray]'``, at the versions of constraints.txt) in a fresh
virtualenv outside the checkout; ``taskgate up`` from an empty directory, with no Ray address,
so its heavy worker starts the local Ray of worker/ray_local.py from the installed package on
its first Ray task; ``demo.ray_primes`` submitted with the installed CLI completes with the
right count; and once ``up`` stops, no process of that install is left (the local Ray stops
with its worker)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.install.conftest import Up, run
from tests.support import ROOT

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def installed(built: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("venv-ray") / "env"
    run(["python3", "-m", "venv", str(venv)], timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    constraints = str(ROOT / "constraints.txt")
    run([*pip, "--disable-pip-version-check", "-c", constraints, f"{built['wheel']}[ray]"], 600)
    return venv


def processes_of(venv: Path) -> list[str]:
    """The command lines of the processes that run from ``venv`` (its Python, or Ray's
    binaries in its site-packages)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                if str(venv) in cmdline:
                    found.append(f"{proc.name}: {cmdline[:200]}")
    return found


@pytest.fixture(scope="module")
def up(installed: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    cwd = tmp_path_factory.mktemp("empty-ray")
    server = Up(
        installed,
        cwd,
        {
            "TASKGATE_RAY_LOCAL_CPUS": "2",
            "CELERY_FAST_WORKER_CONCURRENCY": "1",
            "CELERY_HEAVY_WORKER_CONCURRENCY": "1",
            # The local Ray's folder (worker/ray_local.py) is ours alone, and deep, as a
            # user's $TMPDIR may be: too deep for Ray's Unix sockets under it.
            "TMPDIR": str(cwd),
        },
    )
    try:
        server.wait_ready()
        yield server
    finally:
        code = server.stop()
        assert code == 0, f"taskgate up did not stop cleanly ({code}):\n{server.log.read_text()}"


def test_the_wheel_s_ray_extra_runs_ray_primes_on_a_local_ray_that_stops_with_up(
    installed: Path, up: Up
) -> None:
    env = {
        "PATH": f"{installed / 'bin'}:/usr/bin:/bin",
        "HOME": str(up.log.parent),
        "LANG": "C.UTF-8",
        "TASKGATE_URL": up.url,
    }
    taskgate = str(installed / "bin" / "taskgate")
    token = run([taskgate, "token", "wheel-ray"], 60, env=env, cwd=up.log.parent).stdout.strip()
    out = run(
        [
            taskgate, "submit", "demo.ray_primes", "--input", '{"limit": 2000000, "parts": 2}',
            "--follow", "--json",
        ],
        300,
        env={**env, "TASKGATE_TOKEN": token},
        cwd=up.log.parent,
    )  # fmt: skip
    final = json.loads(out.stdout.strip().splitlines()[-1])
    assert final["status"] == "COMPLETED", final
    assert final["result"] == {"limit": 2000000, "parts": 2, "primes": 148933}, final
    assert final["progress"]["percent"] == 100.0, final
    # Ran on Ray: the local head's supervisor and Ray's own processes, from this install.
    running = processes_of(installed)
    assert any("worker.ray_local" in p for p in running), running
    assert any("gcs_server" in p for p in running), running
    assert any("raylet" in p for p in running), running
    code = up.stop()
    assert code == 0, f"taskgate up did not stop cleanly ({code}):\n{up.log.read_text()}"
    deadline = time.monotonic() + 60
    while (left := processes_of(installed)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, "\n".join(left)
