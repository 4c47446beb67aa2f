"""``taskgate gateway --processes 2``: two whole gateways on one port (SO_REUSEPORT), under a
supervisor. Connections are spread over both; a socket on either gets its user's updates of a
task submitted through the other; a process that dies is restarted; SIGTERM stops them all.
Real gateway processes, the session's worker, real Socket.IO clients."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from gateway.cli.embedded import free_port, wait_for_port
from tests.support import (
    ROOT,
    CeleryWorker,
    SocketClient,
    _quiet_ports,
    auth,
    end_process,
    make_token,
)


def two_free_ports() -> int:
    """A port below the ephemeral range whose next one is free too (a client connection may
    hold the neighbour of an ephemeral one)."""
    while True:
        (port,) = _quiet_ports(1)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return sorted(int(p) for p in out.stdout.split())


class Gateways:
    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.port = free_port()
        self.metrics_port = two_free_ports()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / f"gateways-{self.port}.log"
        env = {
            **env,
            "TASKGATE_PORT": str(self.port),
            "TASKGATE_HOST": "127.0.0.1",
            # Each process's own /metrics: this port and the next (the shared one would give
            # each scrape to either).
            "TASKGATE_GATEWAY_METRICS_PORT": str(self.metrics_port),
        }
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli.commands", "gateway", "--processes", "2"],
                env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        wait_for_port(self.port, 30, self.proc)
        for n in range(2):  # both processes serve (each on its own metrics port too)
            wait_for_port(self.metrics_port + n, 30, self.proc)
        deadline = time.monotonic() + 30
        while len(children_of(self.proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)

    def stop(self) -> int:
        return end_process(self.proc)


@pytest.fixture(scope="module")
def gateways(env: dict[str, str], celery_worker: CeleryWorker, log_dir: Path) -> Iterator[Gateways]:
    running = Gateways(env, log_dir)
    try:
        yield running
    finally:
        running.stop()


async def healthz_served(port: int) -> float:
    """How many /healthz requests the process with metrics on ``port`` answered."""
    url = f"http://127.0.0.1:{port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        text = await resp.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("taskgate_http_request_duration_seconds_count{") and (
            'route="/healthz"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_connections_are_spread_over_both_processes(gateways: Gateways) -> None:
    assert len(children_of(gateways.proc.pid)) == 2
    before = [await healthz_served(gateways.metrics_port + n) for n in range(2)]
    for _ in range(40):  # a fresh connection each: the kernel picks a process for each
        async with aiohttp.ClientSession() as s, s.get(f"{gateways.url}/healthz") as resp:
            assert resp.status == 200
    after = [await healthz_served(gateways.metrics_port + n) for n in range(2)]
    served = [a - b for a, b in zip(after, before, strict=True)]
    assert sum(served) == 40 and min(served) > 0, served


async def test_a_socket_on_either_process_gets_every_update(gateways: Gateways) -> None:
    user = f"procs-{uuid.uuid4().hex[:6]}"
    clients = [await SocketClient(gateways.url, make_token(user)).connect() for _ in range(6)]
    try:
        ids = []
        for _ in range(4):  # fresh connections: the submits land on both processes
            async with (
                aiohttp.ClientSession() as fresh,
                fresh.post(
                    f"{gateways.url}/api/tasks",
                    json={"task": "demo.count", "input": {"steps": 3, "delay": 0.02}},
                    headers=auth(user),
                ) as resp,
            ):
                assert resp.status == 202
                ids.append((await resp.json())["task_id"])
        for client in clients:
            for task_id in ids:
                final = await client.wait_terminal(task_id)
                assert final["status"] == "COMPLETED"
                n = final["seq"]
                await client.wait_for(lambda c=client, t=task_id, n=n: len(c.events[t]) >= n, 10)
                assert [e["seq"] for e in client.events[task_id]] == list(range(1, n + 1))
    finally:
        for client in clients:
            await client.close()


async def test_a_process_that_dies_is_restarted_and_sigterm_stops_all(
    env: dict[str, str], celery_worker: CeleryWorker, log_dir: Path
) -> None:
    own = Gateways(env, log_dir)
    try:
        first = children_of(own.proc.pid)
        assert len(first) == 2
        os.kill(first[0], signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            now = children_of(own.proc.pid)
            if len(now) == 2 and first[0] not in now:
                break
            await asyncio.sleep(0.1)
        now = children_of(own.proc.pid)
        assert len(now) == 2 and first[0] not in now and first[1] in now, (first, now)
        # Still serving on the port.
        async with aiohttp.ClientSession() as session, session.get(f"{own.url}/healthz") as r:
            assert r.status == 200
    finally:
        code = own.stop()
    assert code == 0, own.log.read_text()[-2000:]
    assert children_of(own.proc.pid) == []
