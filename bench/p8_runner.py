"""P8: no-op tasks per second through one prefork Celery worker, taskgate's runner against a
plain Celery task.

Two systems, each with its own unmodified ``celery ... worker -P prefork -c 2 -Q fast`` on the
run's redis-server, with the configuration ``shared.celery_config`` builds (late acks,
prefetch 1, JSON, task events, the Redis result backend), each on its own key prefix:

- taskgate: ``celery -A worker`` with ``TASKGATE_TASK_MODULES=bench.tasks`` running
  ``bench.noop`` (``@task(..., schema=NoInput)``, nothing in it). The messages and records are
  made as the gateway makes them: ``TaskService.submit_many`` in this process, with the broker
  the gateway builds (``OutboxBroker`` over the records' Redis: record, message and outbox copy
  in one script run per chunk).
- plain Celery: ``celery -A bench.plain_celery`` running ``@app.task`` ``plain.noop`` (returns
  None; Celery stores its result), the messages sent with ``send_task``.

Each round fills the queue with ``N`` messages while no worker runs, then starts the worker and
waits (bounded) until all ``N`` are done. The rate is taken from the completion times Redis and
Celery record (taskgate: the scores of the owner's ended set, written by ``transition.lua``;
Celery: each result's ``date_done``), from completion ``SKIP`` to the last: the worker's start
and the pool processes' first tasks (connections, script loads) stay out of it. The two take
turns ``ROUNDS`` times and each reports its best round. Also reported: the worker's CPU
(main process and pool, from /proc) and Redis's, per task, and Redis commands per task
(``INFO commandstats``).

With ``profile``, one more round of each runs with ``py-spy record --subprocesses`` on the
worker, and the pool processes' samples are split by what in the runner they fall under
(``bench.profiling_p8``).
"""

from __future__ import annotations

import contextlib
import math
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import redis

from bench.harness import Proc, Results, cpu_seconds, gateway_env, new_prefix, tree_cpu
from bench.p2_batch import _run
from bench.plain_celery import NAME as PLAIN_NAME
from bench.plain_celery import make_app
from bench.tasks import NAME as TG_NAME
from gateway.broker.outbox import OutboxBroker
from gateway.broker.redis_broker import RedisBroker
from gateway.tasks.service import TaskService
from shared.records import AsyncRecords
from shared.redis_client import async_client
from shared.settings import Settings

N = 3_000
SKIP = 100
ROUNDS = 3
CONCURRENCY = 2
ROUND_TIMEOUT_S = 60.0
USER = "bench-p8"


def worker_argv(app: str, name: str, concurrency: int = CONCURRENCY) -> list[str]:
    """An unmodified Celery worker; WARNING logs (Celery's default level) for both systems."""
    return [
        sys.executable, "-m", "celery", "-A", app, "worker", "-P", "prefork",
        "-c", str(concurrency), "-Q", "fast", "-n", f"{name}-{uuid.uuid4().hex[:6]}@%h",
        "--loglevel", "WARNING", "--without-mingle", "--without-gossip", "--without-heartbeat",
    ]  # fmt: skip


def tg_env(redis_url: str, prefix: str) -> dict[str, str]:
    return gateway_env(redis_url, prefix, 0, TASKGATE_TASK_MODULES="bench.tasks")


def tg_settings(redis_url: str, prefix: str) -> Settings:
    return Settings(
        redis_url=redis_url,
        key_prefix=prefix,
        max_active=0,
        submit_rate=0,
        task_modules=("bench.tasks",),
    )


async def tg_submit(redis_url: str, prefix: str, user: str, n: int) -> list[str]:
    """``n`` no-op tasks through the gateway's accept path (as bench/p2_batch.py does)."""
    settings = tg_settings(redis_url, prefix)
    client = async_client(redis_url)
    records = AsyncRecords(client, settings.keys, settings.retention_s)
    broker = OutboxBroker(
        RedisBroker(redis_url, settings.keys.broker_prefix, timeout=30), settings.keys
    )
    manager = TaskService(settings, records, broker)
    ids: list[str] = []
    try:
        for start in range(0, n, 1000):
            items = [{"task": TG_NAME, "input": {}} for _ in range(min(1000, n - start))]
            answers = await manager.submit_many(user, items)
            ids += [a["task_id"] for a in answers if isinstance(a, dict) and "task_id" in a]
    finally:
        await manager.close()
        await broker.close()
        await client.aclose()
    if len(ids) != n:
        raise RuntimeError(f"P8: only {len(ids)} of {n} taskgate tasks accepted")
    return ids


def tg_done(client: redis.Redis, prefix: str, user: str, n: int) -> Callable[[], list[float]]:
    settings = tg_settings("redis://unused", prefix)
    ended = settings.keys.user_ended(user)

    def poll() -> list[float]:
        if client.zcard(ended) < n:
            return []
        return sorted(score for _, score in client.zrange(ended, 0, -1, withscores=True))

    return poll


def tg_check(client: redis.Redis, prefix: str, ids: list[str]) -> None:
    keys = tg_settings("redis://unused", prefix).keys
    pipe = client.pipeline(transaction=False)
    for task_id in ids:
        pipe.hget(keys.task(task_id), "status")
    statuses = {bytes(s) for s in pipe.execute()}
    if statuses != {b'"COMPLETED"'}:
        raise RuntimeError(f"P8: taskgate statuses {statuses}")


def plain_submit(redis_url: str, prefix: str, n: int) -> list[str]:
    app = make_app(Settings(redis_url=redis_url, key_prefix=prefix))
    try:
        return [app.send_task(PLAIN_NAME, queue="fast").id for _ in range(n)]
    finally:
        app.close()


def plain_done(client: redis.Redis, prefix: str, ids: list[str]) -> Callable[[], list[float]]:
    result_prefix = Settings(key_prefix=prefix).keys.broker_prefix + "celery-task-meta-"
    keys = [result_prefix + i for i in ids]

    def poll() -> list[float]:
        done = sum(client.exists(*keys[i : i + 500]) for i in range(0, len(keys), 500))
        if done < len(keys):
            return []
        times = []
        for i in range(0, len(keys), 500):
            for raw in client.mget(keys[i : i + 500]):
                meta = orjson.loads(raw)
                if meta["status"] != "SUCCESS":
                    raise RuntimeError(f"P8: a plain Celery task ended {meta['status']}")
                times.append(datetime.fromisoformat(meta["date_done"]).timestamp())
        return sorted(times)

    return poll


def _commandstats(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def one_round(
    label: str,
    app: str,
    env: dict[str, str],
    poll: Callable[[], list[float]],
    client: redis.Redis,
    redis_pid: int | None,
    work: Path,
    n: int,
    profile: Path | None = None,
) -> dict[str, Any]:
    """Start the worker on a full queue, wait until ``poll`` has all ``n`` completion times."""
    before = _commandstats(client)
    redis_cpu0 = cpu_seconds(redis_pid) if redis_pid else math.nan
    worker = Proc(f"p8-{label}", worker_argv(app, label), env, work).start()
    spy: Proc | None = None
    try:
        if profile is not None:
            spy = Proc("p8-pyspy", [
                str(Path(sys.executable).with_name("py-spy")), "record", "-p", str(worker.pid),
                "--subprocesses", "--nonblocking", "-r", "250", "-f", "raw",
                "-o", str(profile), "-d", "40",
            ], log_dir=work).start()  # fmt: skip
        deadline = time.monotonic() + ROUND_TIMEOUT_S
        times: list[float] = []
        cpu = 0.0
        while time.monotonic() < deadline:
            cpu = tree_cpu(worker.pid)
            times = poll()
            if times:
                break
            if not worker.alive():
                raise RuntimeError(f"P8: {label} worker exited:\n{worker.tail()}")
            time.sleep(0.05)
        if not times:
            raise TimeoutError(f"P8: {label}: not all {n} tasks done in {ROUND_TIMEOUT_S:.0f}s")
    finally:
        if spy is not None and spy.proc is not None:
            spy.proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.proc.wait(20)
            spy.stop()
        worker.stop()
    redis_cpu = (cpu_seconds(redis_pid) - redis_cpu0) if redis_pid else math.nan
    after = _commandstats(client)
    calls = {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0) > 0}
    window = times[-1] - times[SKIP]
    return {
        "rate": (len(times) - 1 - SKIP) / window,
        "rate_all": (len(times) - 1) / (times[-1] - times[0]),
        "seconds": window,
        "worker_cpu_us": cpu / n * 1e6,
        "redis_cpu_us": redis_cpu / n * 1e6,
        "calls": calls,
    }


def _calls_per_task(calls: dict[str, int], n: int) -> str:
    top = sorted(calls.items(), key=lambda kv: -kv[1])
    return " ".join(f"{k}:{v / n:.1f}" for k, v in top if v / n >= 0.05)


def run(
    results: Results,
    redis_url: str,
    work: Path,
    *,
    redis_pid: int | None = None,
    n: int = N,
    profile: bool = False,
) -> None:
    client = redis.Redis.from_url(redis_url)
    rounds: dict[str, list[dict[str, Any]]] = {"taskgate": [], "plain": []}

    def tg_round(spy: Path | None = None) -> dict[str, Any]:
        prefix, user = new_prefix("p8tg"), f"{USER}-{uuid.uuid4().hex[:6]}"
        ids = _run(tg_submit(redis_url, prefix, user, n))
        out = one_round("taskgate", "worker", tg_env(redis_url, prefix),
                        tg_done(client, prefix, user, n), client, redis_pid, work, n,
                        spy)  # fmt: skip
        tg_check(client, prefix, ids)
        return out

    def plain_round(spy: Path | None = None) -> dict[str, Any]:
        prefix = new_prefix("p8cel")
        ids = plain_submit(redis_url, prefix, n)
        return one_round("plain", "bench.plain_celery", tg_env(redis_url, prefix),
                         plain_done(client, prefix, ids), client, redis_pid, work, n,
                         spy)  # fmt: skip

    try:
        for _ in range(ROUNDS):
            rounds["taskgate"].append(tg_round())
            rounds["plain"].append(plain_round())
        if profile:
            tg_spy, plain_spy = work / "p8-taskgate.txt", work / "p8-plain.txt"
            tg_round(tg_spy)
            plain_round(plain_spy)
            from bench.profiling_p8 import report

            results.notes.append(report(tg_spy, plain_spy, n))
    finally:
        client.close()
    best = {k: max(v, key=lambda r: r["rate"]) for k, v in rounds.items()}
    labels = {
        "taskgate": f"taskgate runner ({TG_NAME})",
        "plain": f"plain Celery @app.task ({PLAIN_NAME})",
    }
    for key, r in best.items():
        results.add(
            "P8",
            labels[key],
            f"no-op tasks, 1 worker -c {CONCURRENCY}",
            r["rate"],
            "tasks/s",
            tasks=n,
            window_s=r["seconds"],
            rate_incl_start=r["rate_all"],
            rounds="/".join(f"{x['rate']:.0f}" for x in rounds[key]),
            worker_cpu_us_per_task=r["worker_cpu_us"],
            redis_cpu_us_per_task=r["redis_cpu_us"],
            redis_calls_per_task=_calls_per_task(r["calls"], n),
        )
    results.ratio(
        "P8", "taskgate runner / plain Celery", best["taskgate"]["rate"], best["plain"]["rate"],
        at_least=0.8,
    )  # fmt: skip
    # Each turn's pair (taskgate, then plain, a few seconds apart): the median of their ratios,
    # for how much a slow minute moved the best-round figure above.
    pairs = zip(rounds["taskgate"], rounds["plain"], strict=True)
    paired = sorted(t["rate"] / p["rate"] for t, p in pairs)
    results.ratio(
        "P8", "taskgate / plain, median of the paired rounds", paired[len(paired) // 2], 1.0,
        note="rounds " + "/".join(f"{x:.2f}" for x in paired),
    )  # fmt: skip


def main() -> None:
    import argparse
    import tempfile

    from bench.harness import redis_server, render_table

    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("-n", type=int, default=N)
    parser.add_argument(
        "--keep-profiles", type=Path, help="copy the raw py-spy files of --profile to this folder"
    )
    args = parser.parse_args()
    results = Results()
    with tempfile.TemporaryDirectory(prefix="taskgate-p8-") as tmp, redis_server(Path(tmp)) as r:
        pid = r.proc.pid if r.proc is not None else None
        run(results, r.url, Path(tmp), redis_pid=pid, n=args.n, profile=args.profile)
        if args.keep_profiles is not None and args.profile:
            import shutil

            args.keep_profiles.mkdir(parents=True, exist_ok=True)
            for name in ("p8-taskgate.txt", "p8-plain.txt"):
                shutil.copy(Path(tmp) / name, args.keep_profiles / name)
    print(render_table(results))
    for note in results.notes:
        print(note)


if __name__ == "__main__":
    main()
