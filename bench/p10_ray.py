"""P10: a task's body handed to Ray (issue 19) against the same work in the Celery worker.

One unmodified ``celery -A worker worker -c 1`` (one pool process) on the run's redis-server,
``TASKGATE_RAY_ADDRESS`` pointing at a local ``ray start --head`` with 2 CPUs on 127.0.0.1 (no
dashboard, its own temporary directory, stopped by its PID). Tasks are sent with the producer
(``apply_async``, records as the gateway writes them) and timed by their records: the run time
is ``finished_at - started_at``, both stamped by the runner around the body, so queueing and
polling stay out of it.

- speed-up: ``demo.ray_primes`` (primes below ``LIMIT``, split over 2 Ray tasks with
  ``ctx.map``) against ``bench.p10_primes_here``, the very same sieve (``worker.demo.
  sieve_range``) over the whole range in the Celery pool process. Best of ``ROUNDS`` each,
  taking turns, after one warm-up run of each (the Ray workers import the task modules once).
- hand-off: ``bench.p10_tiny_ray`` (``engine="ray"``, returns at once) against
  ``bench.p10_tiny`` (the same body on the default engine), ``TINY`` runs each, one at a time:
  the median and p90 of the run time, and their difference, the cost of one hand-off. The
  first Ray task of a pool process also connects it to the cluster and makes its progress hub:
  reported apart as the cold start.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.harness import Proc, Results, gateway_env, new_prefix
from shared.registry import TaskContext, task
from shared.settings import Settings

LIMIT = 200_000_000
ROUNDS = 3
TINY = 40
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@task("bench.p10_tiny", queue="heavy")
def tiny(ctx: TaskContext) -> dict[str, Any]:
    """Returns at once, in the Celery pool process."""
    return {"ok": True}


@task("bench.p10_tiny_ray", queue="heavy", engine="ray")
def tiny_ray(ctx: TaskContext) -> dict[str, Any]:
    """Returns at once, in a Ray worker."""
    return {"ok": True}


@task("bench.p10_primes_here", queue="heavy")
def primes_here(ctx: TaskContext) -> dict[str, Any]:
    """``demo.ray_primes``'s sieve over the whole range, in the Celery pool process."""
    from worker.demo import sieve_range

    return {"primes": sieve_range(ctx, (0, LIMIT))}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_port(port: int, proc: Proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{proc.name} not listening after {timeout}s:\n{proc.tail()}")


def _stop_head(head: Proc) -> None:
    if head.proc is None:
        return
    head.proc.send_signal(signal.SIGTERM)  # ``ray start --block`` stops the head's processes
    with contextlib.suppress(subprocess.TimeoutExpired):
        head.proc.wait(15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.proc.pid, signal.SIGKILL)
    head.proc.wait(5)
    head.proc = None


def _run_time(handle: Any, timeout: float) -> tuple[float, Any]:
    """Wait (polling the record every 5 ms) for the end; the run time and the result."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = handle.status()
        if snap["status"] == "COMPLETED":
            return float(snap["finished_at"]) - float(snap["started_at"]), snap["result"]
        if snap["status"] in ("FAILED", "CANCELLED", "TIMED_OUT"):
            raise RuntimeError(f"bench task ended {snap['status']}: {snap.get('error')}")
        time.sleep(0.005)
    raise TimeoutError("bench task did not end in time")


def run(results: Results, redis_url: str, work: Path) -> None:
    from shared import producer

    port = _free_port()
    ray_dir = Path(tempfile.mkdtemp(prefix="tgray-b-", dir="/tmp"))
    prefix = new_prefix("p10")
    env = gateway_env(
        redis_url,
        prefix,
        _free_port(),
        TASKGATE_TASK_MODULES="worker.demo,bench.p10_ray",
        TASKGATE_RAY_ADDRESS=f"127.0.0.1:{port}",
        **LOOPBACK,
    )
    head = Proc(
        "ray-head",
        [
            sys.executable,
            "-m",
            "ray.scripts.scripts",
            "start",
            "--head",
            "--block",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(port),
            "--num-cpus",
            "2",
            "--include-dashboard=false",
            "--disable-usage-stats",
            "--temp-dir",
            str(ray_dir),
        ],
        env,
        work,
    ).start()
    name = f"p10-{uuid.uuid4().hex[:6]}"
    worker = Proc(
        "worker-p10",
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker",
            "worker",
            "-Q",
            "heavy",
            "-c",
            "1",
            "-n",
            f"{name}@%h",
            "--loglevel",
            "INFO",
            "--without-mingle",
            "--without-gossip",
        ],
        env,
        work,
    )
    try:
        _wait_port(port, head, 60)
        worker.start()
        deadline = time.monotonic() + 60
        while " ready." not in worker.tail(100_000):
            if not worker.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{worker.tail()}")
            time.sleep(0.1)
        producer.configure(Settings.from_env(env))
        from shared.registry import get_task, load_task_modules

        load_task_modules(["worker.demo", "bench.p10_ray"])
        ray_primes = get_task("demo.ray_primes")
        send = producer.send

        def once(spec_name: str, data: dict[str, Any], timeout: float = 120) -> tuple[float, Any]:
            handle = send(get_task(spec_name), (), data, user="bench")
            return _run_time(handle, timeout)

        # Cold start: this pool process's first Ray task connects it and makes its hub.
        cold, _ = once("bench.p10_tiny_ray", {})
        once("bench.p10_tiny", {})
        tiny_ray_s = [once("bench.p10_tiny_ray", {})[0] for _ in range(TINY)]
        tiny_s = [once("bench.p10_tiny", {})[0] for _ in range(TINY)]
        # Warm-up of the primes (the Ray workers import the task modules once).
        once(ray_primes.name, {"limit": 1_000_000, "parts": 2})
        here, there = [], []
        expect = None
        for _ in range(ROUNDS):
            t, out = once("bench.p10_primes_here", {})
            here.append(t)
            t2, out2 = once(ray_primes.name, {"limit": LIMIT, "parts": 2})
            there.append(t2)
            expect = expect or out["primes"]
            if out2["primes"] != out["primes"]:
                raise RuntimeError(f"counts differ: {out2} against {out}")
    finally:
        worker.stop(20)
        _stop_head(head)

    best_here, best_ray = min(here), min(there)
    results.add("P10", "Celery process", f"primes below {LIMIT:,}, run time", best_here, "s")
    results.add("P10", "Ray, 2 CPUs", f"primes below {LIMIT:,}, run time", best_ray, "s")
    results.ratio("P10", "Ray 2 CPUs speed-up over one Celery process", best_here, best_ray)
    med_ray, med = statistics.median(tiny_ray_s) * 1e3, statistics.median(tiny_s) * 1e3
    p90 = statistics.quantiles(tiny_ray_s, n=10)[-1] * 1e3
    results.add("P10", "default engine", "tiny task run time (median)", med, "ms")
    results.add("P10", "Ray engine", "tiny task run time (median)", med_ray, "ms", p90_ms=p90)
    results.add("P10", "Ray engine", "hand-off overhead (median difference)", med_ray - med, "ms")
    results.add("P10", "Ray engine", "cold start (first Ray task of a process)", cold * 1e3, "ms")
    results.notes.append(
        f"P10: primes below {LIMIT:,} = {expect}; run times here {[round(x, 2) for x in here]} s, "
        f"on Ray {[round(x, 2) for x in there]} s; tiny task median {med:.1f} ms (default "
        f"engine) vs {med_ray:.1f} ms (Ray, p90 {p90:.1f} ms), cold {cold * 1e3:.0f} ms"
    )
