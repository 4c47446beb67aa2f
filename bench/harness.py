"""What every benchmark shares: processes it starts (and only those), Redis, stats, results.

Every process a benchmark starts is started here, in its own process group, and stopped here by
its own pid; nothing else on the machine is touched. All traffic is on loopback.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.cli.embedded import free_port, stop_group, wait_for_port
from tests.support import RedisServer

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-" + "b" * 40
FD_LIMIT = 65536


def raise_fd_limit(want: int = FD_LIMIT) -> int:
    """Raise this process's open-file limit as far as allowed; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            # root may raise the hard limit too
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --- statistics -----------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (``nan`` when empty)."""
    if not sorted_values:
        return math.nan
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100.0 * len(sorted_values)) - 1))
    return float(sorted_values[k])


def summary_ms(samples_s: Sequence[float]) -> dict[str, float]:
    """p50/p99/max of samples given in seconds, in milliseconds."""
    values = sorted(samples_s)
    return {
        "p50_ms": percentile(values, 50) * 1000,
        "p99_ms": percentile(values, 99) * 1000,
        "max_ms": (values[-1] * 1000) if values else math.nan,
        "n": float(len(values)),
    }


# --- results --------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table: a measurement of one system in one benchmark."""

    bench: str
    system: str
    metric: str
    value: float
    unit: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Ratio:
    """A ratio taskgate/baseline with its target, as the issue states it."""

    bench: str
    name: str
    value: float
    target: str
    met: bool | None
    note: str = ""


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    ratios: list[Ratio] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    foreign_cpu: dict[str, float] = field(default_factory=dict)

    def add(self, bench: str, system: str, metric: str, value: float, unit: str, **extra: Any):
        self.rows.append(Row(bench, system, metric, value, unit, dict(extra)))

    def ratio(
        self,
        bench: str,
        name: str,
        num: float,
        den: float,
        *,
        at_least: float | None = None,
        at_most: float | None = None,
        note: str = "",
    ) -> float:
        value = num / den if den and not math.isnan(den) and not math.isnan(num) else math.nan
        met: bool | None = None
        target = ""
        if at_least is not None:
            target = f">= {at_least:g}x"
            met = bool(value >= at_least) if not math.isnan(value) else False
        if at_most is not None:
            target = f"<= {at_most:g}x"
            met = bool(value <= at_most) if not math.isnan(value) else False
        self.ratios.append(Ratio(bench, name, value, target, met, note))
        return value

    def check(self, bench: str, name: str, value: float, target: str, met: bool, note: str = ""):
        self.ratios.append(Ratio(bench, name, value, target, met, note))

    def to_json(self, machine: Mapping[str, Any], argv: Sequence[str]) -> dict[str, Any]:
        def clean(x: Any) -> Any:
            if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
                return None
            if isinstance(x, dict):
                return {k: clean(v) for k, v in x.items()}
            if isinstance(x, list):
                return [clean(v) for v in x]
            return x

        return clean(
            {
                "command": " ".join(argv),
                "machine": dict(machine),
                "rows": [r.__dict__ for r in self.rows],
                "ratios": [r.__dict__ for r in self.ratios],
                "notes": self.notes,
                "seconds": self.seconds,
                "foreign_cpu_cores": self.foreign_cpu,
            }
        )


def fmt(value: float, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if unit in ("ms",) or abs(value) < 10:
        return f"{value:,.2f}"
    return f"{value:,.0f}"


def render_table(results: Results) -> str:
    lines = ["| bench | system | metric | value | unit | detail |", "|---|---|---|---:|---|---|"]
    for r in results.rows:
        detail = ", ".join(
            f"{k}={fmt(v) if isinstance(v, float) else v}" for k, v in r.extra.items()
        )
        value = fmt(r.value, r.unit)
        lines.append(f"| {r.bench} | {r.system} | {r.metric} | {value} | {r.unit} | {detail} |")
    lines += ["", "| bench | ratio | value | target | met | note |", "|---|---|---:|---|---|---|"]
    for q in results.ratios:
        met = "n/a" if q.met is None else ("yes" if q.met else "NO")
        lines.append(f"| {q.bench} | {q.name} | {fmt(q.value)} | {q.target} | {met} | {q.note} |")
    return "\n".join(lines)


def machine_facts() -> dict[str, Any]:
    facts: dict[str, Any] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                facts["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                facts["mem_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    facts["kernel"] = os.uname().release
    with contextlib.suppress(Exception):
        import aiohttp
        import engineio
        import redis
        import socketio

        facts["aiohttp"] = aiohttp.__version__
        facts["python-socketio"] = socketio.__version__ if hasattr(socketio, "__version__") else ""
        facts["python-engineio"] = getattr(engineio, "__version__", "")
        facts["redis-py"] = redis.__version__
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        facts["python-socketio"] = version("python-socketio")
        facts["python-engineio"] = version("python-engineio")
        facts["celery"] = version("celery")
        facts["uvloop"] = version("uvloop")
    return facts


# --- processes ------------------------------------------------------------------------------


class Proc:
    """A child process in its own group; ``stop`` ends that group and nothing else."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env) if env is not None else dict(os.environ)
        self.log = (log_dir or Path(tempfile.gettempdir())) / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Proc:
        out = open(self.log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
        out.close()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            stop_group(self.proc, timeout)
        self.proc = None


def _all_cpu() -> dict[int, tuple[int, float]]:
    """Every process's (parent pid, CPU seconds) from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[int, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        out[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks)
    return out


class ForeignLoad:
    """CPU used by processes that are not this run's (other people's work on a shared box),
    in cores, between ``start`` and ``stop``: a number to judge a benchmark's noise by."""

    def __init__(self) -> None:
        self.before: dict[int, tuple[int, float]] = {}
        self.t0 = 0.0

    def start(self) -> None:
        self.before = _all_cpu()
        self.t0 = time.monotonic()

    def stop(self) -> float:
        after = _all_cpu()
        elapsed = time.monotonic() - self.t0
        snapshot = {**self.before, **after}
        ours = {os.getpid()}
        changed = True
        while changed:  # every descendant of this process, whoever its parent is now
            changed = False
            for pid, (ppid, _) in snapshot.items():
                if ppid in ours and pid not in ours:
                    ours.add(pid)
                    changed = True
        used = 0.0
        for pid, (_, cpu) in after.items():
            if pid in ours:
                continue
            used += cpu - self.before.get(pid, (0, 0.0))[1]
        return used / elapsed if elapsed > 0 else 0.0


def rss_bytes(pid: int) -> int:
    """Resident set size of one process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    """User+system CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its live children (a worker's pool, the processes of
    ``taskgate gateway --processes``)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    total = 0.0
    for p in [pid, *(int(x) for x in out.stdout.split())]:
        with contextlib.suppress(OSError):
            total += cpu_seconds(p)
    return total


@contextlib.contextmanager
def redis_server(work: Path) -> Iterator[RedisServer]:
    """A private redis-server for the run, without persistence (it is a benchmark)."""
    server = RedisServer(work / "redis", appendonly=False).start()
    try:
        yield server
    finally:
        server.stop()


def gateway_env(redis_url: str, prefix: str, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKGATE_", "CELERY_"))}
    env.update(
        {
            "TASKGATE_REDIS_URL": redis_url,
            "TASKGATE_SECRET": SECRET,
            "TASKGATE_KEY_PREFIX": prefix,
            "TASKGATE_PORT": str(port),
            "TASKGATE_HOST": "127.0.0.1",
            "TASKGATE_SUBMIT_RATE": "0",
            "TASKGATE_MAX_ACTIVE": "0",
            "TASKGATE_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT),
        }
    )
    env.update(extra)
    return env


def start_listening(
    name: str, argv: Sequence[str], env: Mapping[str, str], port: int, work: Path
) -> Proc:
    proc = Proc(name, argv, env, work).start()
    try:
        wait_for_port(port, 30, proc.proc)
    except (RuntimeError, TimeoutError) as exc:
        proc.stop()
        raise RuntimeError(f"{name} did not start: {exc}\n{proc.tail()}") from None
    return proc


def start_gateway(
    work: Path,
    redis_url: str,
    prefix: str,
    *,
    instrumented: bool = False,
    processes: int = 1,
    **extra: str,
) -> tuple[Proc, int]:
    """One gateway process (or ``processes`` sharing the port: ``taskgate gateway
    --processes``). ``instrumented`` runs it through ``bench.gateway_proc`` (same
    ``gateway.cli.commands.serve``, plus a raised fd limit and the loop-lag sampler of
    gateway/process/looplag)."""
    port = free_port()
    env = gateway_env(redis_url, prefix, port, **extra)
    if instrumented:
        argv = [sys.executable, "-m", "bench.gateway_proc"]
    else:
        argv = [sys.executable, "-m", "gateway.cli.commands", "gateway"]
        if processes > 1:
            argv += ["--processes", str(processes)]
    return start_listening("gateway", argv, env, port, work), port


def new_prefix(tag: str) -> str:
    return f"bench:{tag}:{uuid.uuid4().hex[:6]}:"


def read_json_file(path: Path, timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            data: dict[str, Any] = json.loads(path.read_text())
            return data
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
