"""A relay under load: one server, N connected users, simulated workers; used by P3, P4, P5.

``kind`` is ``gateway`` (taskgate, through ``bench.gateway_proc``), ``psio`` (python-socketio
with AsyncRedisManager) or ``bare`` (bare subscriber loop + plain websockets). Each user has one
RUNNING task; publishers update those tasks round-robin (``bench.publishers``: ``lua``, the
real TRANSITION script per update; ``msg`` and ``psio``, the captured real messages, pre-encoded,
from ``RAW_PROCESSES`` processes).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from bench.clients import ClientPool
from bench.harness import (
    Proc,
    cpu_seconds,
    gateway_env,
    new_prefix,
    read_json_file,
    rss_bytes,
    start_gateway,
    start_listening,
    summary_ms,
)
from bench.publishers import (
    RAW_MODES,
    RAW_PROCESSES,
    Publishers,
    Template,
    capture_templates,
    prepare_running_tasks,
    psio_templates,
)
from gateway.cli.embedded import free_port

CLIENT_MODE = {"gateway": "sio", "psio": "sio", "bare": "raw"}


# TASKGATE_TASK_HEARTBEAT_S for a rig's gateway (its highest): the stall watch's first round is
# an hour after start, since the rig's simulated workers publish progress but never beat.
STALL_WATCH_S = "3600"


class Rig:
    def __init__(
        self,
        kind: str,
        redis_url: str,
        work: Path,
        n_users: int,
        *,
        client_procs: int = 2,
        pub_modes: tuple[str, ...] = ("lua",),
        spread_addrs: bool = False,
        connect_parallel: int = 64,
        extra_env: dict[str, str] | None = None,
        redis_pid: int | None = None,
    ) -> None:
        self.redis_pid = redis_pid
        self.kind = kind
        self.redis_url = redis_url
        self.work = work
        self.users = [f"u{i}" for i in range(n_users)]
        self.client_procs = client_procs
        self.pub_modes = pub_modes
        self.spread_addrs = spread_addrs
        self.connect_parallel = connect_parallel
        self.extra_env = extra_env or {}
        self.prefix = new_prefix(f"rig-{kind}")
        self.lag_file = work / f"looplag-{kind}-{os.getpid()}-{time.monotonic_ns()}.json"
        self.server: Proc | None = None
        self.port = 0
        self.clients: ClientPool | None = None
        self.publishers: dict[str, Publishers] = {}
        self.connect_info: dict[str, Any] = {}
        self.rss_idle = 0
        self.t0 = time.monotonic()

    def log(self, what: str) -> None:
        print(f"[bench]   {self.kind}: {what} (+{time.monotonic() - self.t0:.1f}s)", flush=True)

    def start(self) -> Rig:
        self.t0 = time.monotonic()
        env_extra = {"TASKGATE_LOOPLAG_FILE": str(self.lag_file), **self.extra_env}
        if self.kind == "gateway":
            self.server, self.port = start_gateway(
                self.work, self.redis_url, self.prefix, instrumented=True, **env_extra
            )
        else:
            self.port = free_port()
            env = gateway_env(
                self.redis_url, self.prefix, self.port, BENCH_PORT=str(self.port), **env_extra
            )
            argv = [
                sys.executable,
                "-m",
                "bench.baselines",
                "bare_relay" if self.kind == "bare" else "psio",
            ]
            self.server = start_listening(self.kind, argv, env, self.port, self.work)
        self.log("server listening")
        tasks = prepare_running_tasks(self.redis_url, self.prefix, self.users)
        templates: list[Template] = []
        if any(mode in RAW_MODES for mode in self.pub_modes):
            templates = capture_templates(self.redis_url, self.prefix, tasks)
        for mode in self.pub_modes:
            if mode in RAW_MODES:
                feed = psio_templates(templates) if mode == "psio" else templates
                pub = Publishers(mode, self.redis_url, self.prefix, feed, n=RAW_PROCESSES)
            else:
                pub = Publishers(mode, self.redis_url, self.prefix, tasks)
            self.publishers[mode] = pub
        time.sleep(0.5)
        self.rss_idle = rss_bytes(self.server.pid)
        self.clients = ClientPool(
            f"http://127.0.0.1:{self.port}",
            CLIENT_MODE[self.kind],
            self.users,
            self.client_procs,
            spread_addrs=self.spread_addrs,
            connect_parallel=self.connect_parallel,
        )
        self.log(f"{len(self.users):,} tasks and publishers ready")
        self.connect_info = self.clients.connect()
        self.log(f"{self.connect_info['connected']:,} clients connected")
        if self.connect_info["connected"] < len(self.users):
            raise RuntimeError(
                f"{self.kind}: only {self.connect_info['connected']} of {len(self.users)} "
                f"clients connected: {self.connect_info['errors']}\n"
                f"{self.server.tail() if self.server else ''}"
            )
        time.sleep(1.0)  # connect-time snapshots delivered before any window opens
        return self

    # -- loop lag and memory of the server process -----------------------------------------

    def lag_mark(self) -> dict[str, Any]:
        """Close the server's current loop-lag window and return it (opens the next one)."""
        assert self.server is not None
        before = self.lag_file.stat().st_mtime_ns if self.lag_file.exists() else 0
        os.kill(self.server.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if self.lag_file.exists() and self.lag_file.stat().st_mtime_ns != before:
                return read_json_file(self.lag_file)
            time.sleep(0.01)
        return {}

    def rss(self) -> int:
        assert self.server is not None
        return rss_bytes(self.server.pid)

    # -- load ------------------------------------------------------------------------------

    def cpu_pids(self, mode: str) -> dict[str, list[int]]:
        assert self.server is not None and self.clients is not None
        pids = {
            "server": [self.server.pid],
            "clients": [p.pid for p, _ in self.clients.procs],
            "publishers": [p.pid for p, _ in self.publishers[mode].procs],
        }
        if self.redis_pid:
            pids["redis"] = [self.redis_pid]
        return pids

    def _cpu(self, pids: dict[str, list[int]]) -> dict[str, float]:
        out = {}
        for name, group in pids.items():
            total = 0.0
            for pid in group:
                with contextlib.suppress(OSError, IndexError, ValueError):
                    total += cpu_seconds(pid)
            out[name] = total
        return out

    @staticmethod
    def _shares(cpu0: dict[str, float], cpu1: dict[str, float], dt: float) -> dict[str, float]:
        """Cores each part used over ``dt``; ``others``: what neither this rig's processes nor
        idle account for (other people's work on a shared box, the bench process itself)."""
        out = {k: (cpu1[k] - cpu0[k]) / dt for k in cpu0}
        ours = sum(v for k, v in out.items() if k != "idle")
        out["others"] = max(0.0, (os.cpu_count() or 1) - out["idle"] - ours)
        return {k: round(v, 2) for k, v in out.items()}

    @staticmethod
    def _idle_s() -> float:
        """Seconds the machine's CPUs have been idle (all of them summed), from /proc/stat."""
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")

    def step(self, rate: float, seconds: float, mode: str = "lua") -> dict[str, Any]:
        """Publish at ``rate`` for ``seconds``, wait for delivery to settle, return the step.

        ``cpu`` is the share of one core each part used while publishing lasted, and ``idle``
        how many of the machine's cores were idle meanwhile (near 0: the box was saturated,
        by this run or by others)."""
        assert self.clients is not None
        self.clients.window()
        self.lag_mark()
        pids = self.cpu_pids(mode)
        cpu0, idle0, t0 = self._cpu(pids), self._idle_s(), time.monotonic()
        pub = self.publishers[mode].run(rate, seconds)
        cpu1, idle1, t1 = self._cpu(pids), self._idle_s(), time.monotonic()
        cpu0["idle"], cpu1["idle"] = idle0, idle1
        got = self._settle(pub["sent"])
        loop = self.lag_mark()
        lags = summary_ms(got["lags"])
        delivered = got["received"] / pub["seconds"] if pub["seconds"] else 0.0
        return {
            "offered": rate,
            "sent": pub["sent"],
            "sent_rate": pub["rate"],
            "received": got["received"],
            "delivered_rate": delivered,
            "complete": got["received"] / pub["sent"] if pub["sent"] else 0.0,
            "disconnects": got["disconnects"],
            "open": got["open"],
            "heartbeats": got["heartbeats"],
            "min_heartbeats": got["min_heartbeats"],
            "pings": got["pings"],
            "min_pings": got["min_pings"],
            "loop_p99_ms": loop.get("p99_ms"),
            "loop_max_ms": loop.get("max_ms"),
            "gc_max_ms": loop.get("gc_max_ms"),
            "rss_bytes": loop.get("rss_bytes"),
            "cpu": self._shares(cpu0, cpu1, t1 - t0),
            **lags,
        }

    def _settle(self, sent: float, cap_s: float = 8.0) -> dict[str, Any]:
        """Collect once everything sent arrived, or once arrivals stop (at most ``cap_s``)."""
        assert self.clients is not None
        deadline = time.monotonic() + cap_s
        last = -1
        while True:
            time.sleep(0.25)
            got = self.clients.collect()
            if got["received"] >= sent or got["received"] == last or time.monotonic() > deadline:
                return got
            last = got["received"]

    def stop(self) -> None:
        if self.clients is not None:
            self.clients.close(graceful=len(self.users) <= 2000)
            self.clients = None
            self.log("clients closed")
        for pub in self.publishers.values():
            pub.close()
        self.publishers = {}
        if self.server is not None:
            self.server.stop()
            self.server = None
            self.log("server stopped")
        self.lag_file.unlink(missing_ok=True)
