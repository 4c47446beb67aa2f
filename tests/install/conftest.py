"""What the install tests share: the sdist and the wheel, built once per session from this
checkout as a user would (``python -m build``: the wheel from the sdist, as pip builds it from
PyPI's), ``run``, and ``Up``: ``taskgate up`` of an installed wheel."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from gateway.cli.embedded import free_port
from tests.support import ROOT, end_process

NPM_CLIENT = ROOT / "web" / "node_modules" / "socket.io-client"


def run(cmd: list[str], timeout: float, **kw: Any) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    assert out.returncode == 0, f"{cmd} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if not (NPM_CLIENT / "package.json").is_file():
        pytest.fail("web/node_modules missing: run `npm ci` in web/ (make setup)")
    out = tmp_path_factory.mktemp("dist")
    # From the sdist, as pip builds a wheel from PyPI's sdist: the default of `python -m build`.
    run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], timeout=300)
    (wheel,) = out.glob("taskgate-*.whl")
    (sdist,) = out.glob("taskgate-*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


class Up:
    """``taskgate up`` of the installed wheel, run from an empty directory."""

    def __init__(self, venv: Path, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = cwd / "up.log"
        env = {
            "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
            "HOME": str(cwd),
            "TASKGATE_PORT": str(self.port),
            "LANG": "C.UTF-8",
            **(env or {}),
        }
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [str(venv / "bin" / "taskgate"), "up"], cwd=cwd, env=env, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def wait_ready(self, timeout: float = 90) -> str:
        """The page link ``up`` printed, once ``/readyz`` says ok."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"taskgate up exited:\n{self.log.read_text()[-3000:]}")
            link = re.search(r"taskgate is up: (\S+)", self.log.read_text())
            if link:
                try:
                    with urllib.request.urlopen(self.url + "/readyz", timeout=2) as resp:
                        if json.load(resp)["status"] == "ok":
                            return link.group(1)
                except OSError:
                    pass
            time.sleep(0.25)
        raise AssertionError(f"taskgate up not ready:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> int:
        return end_process(self.proc, signal.SIGINT)  # Ctrl-C, as its banner says
