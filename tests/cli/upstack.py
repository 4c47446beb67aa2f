"""Helpers for tests that run the ``taskgate`` command as a user does: a ``taskgate up`` in a
data folder and on a port of its own, HTTP with a token, the processes it leaves (or not)."""

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
    """``taskgate up`` in ``data_dir`` on ``port`` (a free one if not given); its output
    (banner and log) in ``log``."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        port = free_port() if port is None else port
        self.data_dir, self.port = data_dir, port
        self.log = data_dir.parent / f"up-{time.monotonic_ns()}.log"
        self.out = open(self.log, "wb")  # noqa: SIM115
        self.env = clean_env(TASKGATE_DATA_DIR=str(data_dir), TASKGATE_PORT=str(port))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli.commands", "up"], env=self.env, cwd=ROOT,
            stdout=self.out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.base = f"http://127.0.0.1:{port}"
        wait_until(lambda: b"Ctrl-C stops everything" in self.log.read_bytes(), timeout=60)
        match = re.search(rb"demo token:\s+(\S+)", self.log.read_bytes())
        assert match
        self.token = match.group(1).decode()

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def child_pid(self, name: str) -> int:
        """The pid of the child ``name`` as the supervisor last started it."""
        found = re.findall(rf"(?:started|restarted) {re.escape(name)} \(pid (\d+)\)", self.text())
        assert found, self.text()[-3000:]
        return int(found[-1])

    def interrupt(self, sig: int = signal.SIGINT) -> set[int]:
        """Ctrl-C (or ``sig``); returns every process of the tree as it was just before."""
        tree = descendants(self.proc.pid)
        self.proc.send_signal(sig)
        self.proc.wait(60)
        self.out.close()
        return tree

    def close(self) -> set[int]:
        """Ctrl-C unless it already ended; the tree as it was just before."""
        if self.proc.poll() is None:
            return self.interrupt()
        self.out.close()
        return set()
