"""P1: accepted tasks per second through ``POST /api/tasks`` into one gateway process.

The same wrk run (one thread, the same connections, the same body) is pointed at the gateway,
at an aiohttp handler calling Celery's ``send_task`` in a thread (a), and at a bare aiohttp
handler that parses the JSON and answers 202 (b). Per-user limits are off
(``TASKGATE_SUBMIT_RATE=0``, ``TASKGATE_MAX_ACTIVE=0``); no workers run, tasks just queue.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from bench.harness import (
    SECRET,
    Proc,
    Results,
    gateway_env,
    new_prefix,
    start_gateway,
    start_listening,
    tree_cpu,
)
from bench.profiling import Profiler
from gateway.auth import issue_token
from gateway.cli.embedded import free_port
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
    seconds: float = 9.0,
    connections: int = 32,
    rounds: int = 3,
    profile: bool = False,
) -> None:
    """All three servers run at once and take turns under wrk, ``rounds`` times, ``seconds``
    in all each: a slow minute on this shared VM (CPU steal moves rates by a third) then
    weighs on every system alike instead of on whichever ran in it."""
    token = issue_token(Secret(SECRET), "bench-p1")
    script = work / "p1_post.lua"
    script.write_text(WRK_LUA % {"body": BODY, "token": token})
    redis = sync_client(redis_url)
    systems = {
        "gateway": "taskgate",
        "gateway_2p": "taskgate, 2 processes (--processes 2)",
        "celery_http": "celery send_task in thread",
        "bare_http": "bare aiohttp 202",
    }
    servers: dict[str, tuple[Proc, int, str]] = {}
    try:
        for kind in systems:
            prefix = new_prefix("p1")
            if kind in ("gateway", "gateway_2p"):
                n = 2 if kind == "gateway_2p" else 1
                proc, port = start_gateway(work, redis_url, prefix, processes=n)
            else:
                port = free_port()
                env = gateway_env(redis_url, prefix, port, BENCH_PORT=str(port))
                argv = [sys.executable, "-m", "bench.baselines", kind]
                proc = start_listening(kind, argv, env, port, work)
            servers[kind] = (proc, port, prefix)
        for _, port, _ in servers.values():  # warm-up: connections, imports, scripts
            run_wrk(f"http://127.0.0.1:{port}/api/tasks", script, 1, connections)
        runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in systems}
        cpu: dict[str, float] = dict.fromkeys(systems, 0.0)
        for i in range(rounds):
            for kind, (proc, port, _) in servers.items():
                profiler = None
                if profile and kind == "gateway" and i == 0:
                    profiler = Profiler(proc.pid, work / "p1.pyspy.txt", seconds / rounds)
                cpu0 = tree_cpu(proc.pid)
                url = f"http://127.0.0.1:{port}/api/tasks"
                runs[kind].append(run_wrk(url, script, seconds / rounds, connections))
                cpu[kind] += tree_cpu(proc.pid) - cpu0
                if profiler is not None:
                    results.notes.append(profiler.finish("P1 gateway under wrk (POST /api/tasks)"))
        rates: dict[str, float] = {}
        for kind, label in systems.items():
            done = runs[kind]
            duration = sum(d["duration_us"] for d in done) / 1e6
            rates[kind] = sum(d["accepted"] for d in done) / duration
            extra: dict[str, Any] = {
                "p50_ms": statistics.median(d["p50_us"] for d in done) / 1000,
                "p99_ms": statistics.median(d["p99_us"] for d in done) / 1000,
                "non2xx": sum(d["non2xx"] for d in done),
                "sock_err": sum(d["socket_errors"] for d in done),
                "server_cpu_cores": cpu[kind] / duration,
                "rounds": "/".join(f"{d['rate']:.0f}" for d in done),
            }
            if kind not in ("bare_http",):
                extra["queued_total"] = _queued(redis, f"{servers[kind][2]}broker:fast")
            if kind == "gateway":
                extra["avg_group"] = _avg_group(servers[kind][1])
            results.add("P1", label, "accepted", rates[kind], "tasks/s", **extra)
    finally:
        for proc, _, _ in servers.values():
            _stop(proc)
    results.ratio(
        "P1", "taskgate / celery-in-thread", rates["gateway"], rates["celery_http"], at_least=8
    )
    results.ratio(
        "P1", "taskgate / bare aiohttp", rates["gateway"], rates["bare_http"], at_least=0.6
    )
    results.ratio(
        "P1", "taskgate 2 processes / 1 process", rates["gateway_2p"], rates["gateway"],
        note="one port (SO_REUSEPORT); here 2 cores are shared with wrk and Redis",
    )  # fmt: skip
    redis.close()


def _avg_group(port: int) -> float:
    """Submits per script run (gateway/coalesce.py: groups go in pieces) over the gateway's life,
    from its /metrics."""
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
