"""P9: end-to-end throughput, HTTP submit to COMPLETED at a connected Socket.IO client, against
Celery's ``send_task`` awaited with ``AsyncResult.get``.

Both sides run the same no-op task on ``WORKERS`` unmodified prefork workers with ``-c 2``
each (the gateway, the workers' processes, Redis and the load share the 2 cores; with prefetch
1 and late acks one worker of ``-c 2`` waits on Redis round trips and left a third of the
machine idle on both sides in a first run, so there are two):

- taskgate: a gateway process (``python -m gateway.cli.commands gateway``) and
  ``celery -A worker worker`` (``TASKGATE_TASK_MODULES=bench.tasks``, ``bench.noop``). In this
  process, on uvloop, one python-socketio ``AsyncClient`` of the user is connected (websocket)
  and ``CONCURRENCY`` loops each ``POST /api/tasks`` over one aiohttp session and wait for that
  task's ``COMPLETED`` update on the socket, then submit the next.
- Celery: ``celery -A bench.plain_celery worker`` (``plain.noop``, the same configuration and
  result backend), and ``CONCURRENCY`` threads each calling ``send_task`` then
  ``AsyncResult.get`` (Celery's Redis backend: it waits on the result's pub/sub channel), then
  the next.

Each side first runs ``WARMUP`` tasks, then as many as it can up to ``N`` within ``SECONDS``.
Throughput: tasks completed over the time from the first measured submit to the last
completion. Latency: from just before the submit to the completion's receipt, p50/p99. CPU per
task of each process (from /proc) is reported alongside.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import socketio

from bench.harness import (
    SECRET,
    Proc,
    Results,
    cpu_seconds,
    new_prefix,
    start_gateway,
    summary_ms,
    tree_cpu,
)
from bench.p2_batch import _run
from bench.p8_runner import tg_env, worker_argv
from bench.plain_celery import NAME as PLAIN_NAME
from bench.plain_celery import make_app
from bench.tasks import NAME as TG_NAME
from gateway.auth import issue_token
from shared.settings import Secret, Settings

N = 4_000
WARMUP = 100
SECONDS = 20.0
CONCURRENCY = 32
WORKERS = 2
USER = "bench-p9"
WARMUP_TIMEOUT_S = 60.0


def _start_worker(app: str, label: str, env: dict[str, str], work: Path) -> Proc:
    """The worker, at Celery's default log level (WARNING) as in P8; the warm-up tasks wait
    for it to be ready."""
    worker = Proc(f"p9-{label}", worker_argv(app, label), env, work).start()
    time.sleep(0.5)
    if not worker.alive():
        raise RuntimeError(f"P9: {label} worker did not start:\n{worker.tail()}")
    return worker


class Measured:
    """Latencies of the measured tasks and the span they took."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.first = 0.0
        self.last = 0.0
        self.errors = 0

    def rate(self) -> float:
        span = self.last - self.first
        return len(self.latencies) / span if span > 0 else 0.0


async def _taskgate_load(port: int, user: str, on_start: Callable[[], None]) -> Measured:
    base = f"http://127.0.0.1:{port}"
    token = issue_token(Secret(SECRET), user)
    headers = {"Authorization": f"Bearer {token}"}
    done_at: dict[str, float] = {}
    waiting: dict[str, asyncio.Future[float]] = {}
    sio = socketio.AsyncClient(reconnection=False)
    loop = asyncio.get_running_loop()

    @sio.on("task")  # type: ignore[untyped-decorator]
    async def on_task(data: dict[str, Any]) -> None:
        if data.get("status") != "COMPLETED":
            return
        now = time.perf_counter()
        task_id = data["task_id"]
        fut = waiting.pop(task_id, None)
        if fut is None:
            done_at[task_id] = now  # arrived before the submit's answer
        elif not fut.done():
            fut.set_result(now)

    await sio.connect(base, auth={"token": token}, transports=["websocket"], wait_timeout=10)
    measured = Measured()
    stop_at = 0.0
    count = 0

    async def one(session: aiohttp.ClientSession, timeout: float) -> float:
        t0 = time.perf_counter()
        async with session.post(
            base + "/api/tasks", json={"task": TG_NAME, "input": {}}, headers=headers
        ) as resp:
            if resp.status != 202:
                raise RuntimeError(f"P9: submit answered {resp.status}: {await resp.text()}")
            task_id = (await resp.json())["task_id"]
        at = done_at.pop(task_id, None)
        if at is None:
            fut: asyncio.Future[float] = loop.create_future()
            waiting[task_id] = fut
            at = await asyncio.wait_for(fut, timeout)
        return at - t0

    async def runner(session: aiohttp.ClientSession, limit: int, record: bool) -> None:
        nonlocal count
        while count < limit and (not record or time.perf_counter() < stop_at):
            count += 1
            lat = await one(session, 30 if record else WARMUP_TIMEOUT_S)
            if record:
                measured.latencies.append(lat)
                measured.last = time.perf_counter()

    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(runner(session, WARMUP, False) for _ in range(CONCURRENCY)))
        count = 0
        on_start()
        measured.first = time.perf_counter()
        stop_at = measured.first + SECONDS
        await asyncio.gather(*(runner(session, N, True) for _ in range(CONCURRENCY)))
    await sio.disconnect()
    return measured


def _celery_load(app: Any, on_start: Callable[[], None]) -> Measured:
    measured = Measured()
    lock = threading.Lock()
    count = 0
    stop_at = 0.0

    def one(timeout: float) -> float:
        t0 = time.perf_counter()
        result = app.send_task(PLAIN_NAME, queue="fast")
        result.get(timeout=timeout)
        return time.perf_counter() - t0

    def runner(limit: int, record: bool) -> None:
        nonlocal count
        while True:
            with lock:
                if count >= limit or (record and time.perf_counter() >= stop_at):
                    return
                count += 1
            lat = one(30 if record else WARMUP_TIMEOUT_S)
            if record:
                with lock:
                    measured.latencies.append(lat)
                    measured.last = time.perf_counter()

    with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
        for f in [pool.submit(runner, WARMUP, False) for _ in range(CONCURRENCY)]:
            f.result()
        count = 0
        on_start()
        measured.first = time.perf_counter()
        stop_at = measured.first + SECONDS
        for f in [pool.submit(runner, N, True) for _ in range(CONCURRENCY)]:
            f.result()
    return measured


def _cpu(pids: dict[str, list[int]]) -> dict[str, float]:
    out = {}
    for name, group in pids.items():
        out[name] = sum(tree_cpu(p) if name == "workers" else cpu_seconds(p) for p in group)
    return out


def _add(
    results: Results,
    system: str,
    measured: Measured,
    cpu0: dict[str, float],
    cpu1: dict[str, float],
) -> None:
    n = len(measured.latencies)
    s = summary_ms(measured.latencies)
    span = measured.last - measured.first
    cpu = {k: (cpu1[k] - cpu0[k]) / span for k in cpu1}
    results.add(
        "P9",
        system,
        "submit->terminal at the client",
        measured.rate(),
        "tasks/s",
        tasks=n,
        seconds=span,
        in_flight=CONCURRENCY,
        workers=f"{WORKERS} x -c 2",
        p50_ms=s["p50_ms"],
        p99_ms=s["p99_ms"],
        max_ms=s["max_ms"],
        cpu_cores="/".join(f"{k} {v:.2f}" for k, v in cpu.items()),
    )


def run(results: Results, redis_url: str, work: Path, *, redis_pid: int | None = None) -> None:
    import os

    me = os.getpid()
    # taskgate: gateway + worker, the client here.
    prefix = new_prefix("p9tg")
    user = f"{USER}-{uuid.uuid4().hex[:6]}"
    gateway, port = start_gateway(work, redis_url, prefix, TASKGATE_TASK_MODULES="bench.tasks")
    workers: list[Proc] = []
    try:
        for _ in range(WORKERS):
            workers.append(_start_worker("worker", "taskgate", tg_env(redis_url, prefix), work))
        pids = {"gateway": [gateway.pid], "workers": [w.pid for w in workers], "bench": [me]}
        if redis_pid:
            pids["redis"] = [redis_pid]
        cpu0: dict[str, float] = {}
        tg = _run(_taskgate_load(port, user, lambda: cpu0.update(_cpu(pids))))
        cpu1 = _cpu(pids)
        _add(results, "taskgate HTTP submit -> Socket.IO COMPLETED", tg, cpu0, cpu1)
    finally:
        for w in workers:
            w.stop()
        gateway.stop()
    # Celery: send_task + AsyncResult.get from threads.
    prefix = new_prefix("p9cel")
    env = tg_env(redis_url, prefix)
    workers = [_start_worker("bench.plain_celery", "plain", env, work) for _ in range(WORKERS)]
    app = make_app(Settings(redis_url=redis_url, key_prefix=prefix))
    try:
        pids = {"workers": [w.pid for w in workers], "bench": [me]}
        if redis_pid:
            pids["redis"] = [redis_pid]
        cpu0.clear()
        cel = _celery_load(app, lambda: cpu0.update(_cpu(pids)))
        cpu1 = _cpu(pids)
        _add(results, "celery send_task + AsyncResult.get (threads)", cel, cpu0, cpu1)
    finally:
        app.close()
        for w in workers:
            w.stop()
    results.ratio("P9", "taskgate / celery send_task+get", tg.rate(), cel.rate())
    results.ratio(
        "P9",
        "taskgate p99 / celery p99",
        summary_ms(tg.latencies)["p99_ms"],
        summary_ms(cel.latencies)["p99_ms"],
        note=f"{CONCURRENCY} in flight on each side",
    )


def main() -> None:
    import tempfile

    from bench.harness import redis_server, render_table

    results = Results()
    with tempfile.TemporaryDirectory(prefix="taskgate-p9-") as tmp, redis_server(Path(tmp)) as r:
        pid = r.proc.pid if r.proc is not None else None
        run(results, r.url, Path(tmp), redis_pid=pid)
    print(render_table(results))


if __name__ == "__main__":
    main()
