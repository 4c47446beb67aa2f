"""P1: accepted tasks per second through ``POST /api/tasks`` into one gateway process.

The same wrk run (one thread, the same connections, the same body) is pointed at the gateway,
at an aiohttp handler calling Celery's ``send_task`` in a thread (a), and at a bare aiohttp
handler that parses the JSON and answers 202 (b). Per-user limits are off
(``TASKGATE_SUBMIT_RATE=0``, ``TASKGATE_MAX_ACTIVE=0``); no workers run, tasks just queue.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from bench.harness import (
    SECRET,
    Proc,
    Results,
    cpu_seconds,
    gateway_env,
    new_prefix,
    start_gateway,
    start_listening,
)
from bench.profiling import Profiler
from gateway.auth import issue_token
from gateway.embedded import free_port
from shared.redis_client import sync_client
from shared.settings import Secret

BODY = '{"task":"demo.count","input":{"steps":1,"delay":0}}'

WRK_LUA = """
wrk.method = "POST"
wrk.body = '%(body)s'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(token)s"
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%%d,"non2xx":%%d,"socket_errors":%%d,"duration_us":%%d,' ..
    '"p50_us":%%d,"p99_us":%%d}\\n',
    summary.requests, e.status, e.connect + e.read + e.write + e.timeout, summary.duration,
    latency:percentile(50), latency:percentile(99)))
end
"""


def run_wrk(url: str, script: Path, seconds: float, connections: int) -> dict[str, Any]:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk not found: run scripts/system-deps.sh (Debian package wrk)")
    argv = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", str(script), url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=True)
    for line in out.stdout.splitlines():
        if line.startswith("BENCHJSON "):
            data: dict[str, Any] = json.loads(line[len("BENCHJSON ") :])
            seconds_run = data["duration_us"] / 1e6
            data["accepted"] = data["requests"] - data["non2xx"]
            data["rate"] = data["accepted"] / seconds_run
            return data
    raise RuntimeError(f"wrk printed no summary:\n{out.stdout}\n{out.stderr}")


def run(
    results: Results,
    redis_url: str,
    work: Path,
    *,
    seconds: float = 8.0,
    connections: int = 32,
    profile: bool = False,
) -> None:
    token = issue_token(Secret(SECRET), "bench-p1")
    script = work / "p1_post.lua"
    script.write_text(WRK_LUA % {"body": BODY, "token": token})
    redis = sync_client(redis_url)
    rates: dict[str, float] = {}
    systems = [("taskgate", "gateway"), ("celery send_task in thread", "celery_http")]
    systems.append(("bare aiohttp 202", "bare_http"))
    for label, kind in systems:
        prefix = new_prefix("p1")
        if kind == "gateway":
            proc, port = start_gateway(work, redis_url, prefix)
        else:
            port = free_port()
            env = gateway_env(redis_url, prefix, port, BENCH_PORT=str(port))
            argv = [sys.executable, "-m", "bench.baselines", kind]
            proc = start_listening(kind, argv, env, port, work)
        try:
            url = f"http://127.0.0.1:{port}/api/tasks"
            run_wrk(url, script, 1, connections)  # warm-up: connections, imports, scripts
            profiler = None
            if profile and kind == "gateway":
                profiler = Profiler(proc.pid, work / "p1.pyspy.txt", seconds)
            cpu0 = cpu_seconds(proc.pid)
            data = run_wrk(url, script, seconds, connections)
            cpu = (cpu_seconds(proc.pid) - cpu0) / (data["duration_us"] / 1e6)
            if profiler is not None:
                results.notes.append(profiler.finish("P1 gateway under wrk (POST /api/tasks)"))
            queued = _queued(redis, f"{prefix}broker:fast") if kind != "bare_http" else None
            rates[kind] = data["rate"]
            extra: dict[str, Any] = {
                "p50_ms": data["p50_us"] / 1000,
                "p99_ms": data["p99_us"] / 1000,
                "non2xx": data["non2xx"],
                "sock_err": data["socket_errors"],
                "server_cpu_cores": cpu,
            }
            if queued is not None:
                extra["queued_total"] = queued
            if kind == "gateway":
                extra["avg_group"] = _avg_group(port)
            results.add("P1", label, "accepted", data["rate"], "tasks/s", **extra)
        finally:
            _stop(proc)
    results.ratio(
        "P1", "taskgate / celery-in-thread", rates["gateway"], rates["celery_http"], at_least=8
    )
    results.ratio(
        "P1", "taskgate / bare aiohttp", rates["gateway"], rates["bare_http"], at_least=0.6
    )
    redis.close()


def _avg_group(port: int) -> float:
    """Submits per group (gateway/coalesce.py) over the gateway's life, from its /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("taskgate_submit_groups_total", "taskgate_submit_grouped_total"):
            values[name] = float(value)
    groups = values.get("taskgate_submit_groups_total", 0.0)
    return round(values.get("taskgate_submit_grouped_total", 0.0) / groups, 1) if groups else 0.0


def _queued(redis: Any, base: str) -> int:
    """Messages on a kombu-Redis queue, over all its priority lists."""
    keys = [base] + [f"{base}\x06\x16{p}" for p in range(10)]
    return int(sum(redis.llen(k) for k in keys))


def _stop(proc: Proc) -> None:
    proc.stop()
