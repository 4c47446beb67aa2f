"""P2: 10,000 tasks through one batch call, against a loop of Celery ``send_task`` and against a
raw pipelined ``LPUSH`` of the same bytes.

The taskgate side is ``taskgate_batch`` below, the one function that calls the batch API
(``TaskService.submit_many``: validate each item, write the PENDING records pipelined, push all
messages with one ``RedisBroker.publish``, announce the PENDING snapshots pipelined), in this
process. When the gateway serves ``POST /api/tasks/batch``, the same 10,000 tasks also go
through it in one HTTP call to a gateway process.
"""

from __future__ import annotations

import asyncio
import http.client
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from bench.harness import SECRET, Results, new_prefix, start_gateway
from gateway.auth import issue_token
from gateway.broker.message import build_task_message
from gateway.broker.outbox import OutboxBroker
from gateway.broker.redis_broker import RedisBroker, redis_priority
from gateway.process import gctune
from gateway.tasks.service import TaskService
from shared.records import AsyncRecords
from shared.redis_client import async_client
from shared.settings import Secret, Settings

N_TASKS = 10_000
ROUNDS = 3
USER = "bench-p2"


def bodies(n: int) -> list[dict[str, Any]]:
    return [{"task": "demo.count", "input": {"steps": 1 + i % 10, "delay": 0}} for i in range(n)]


async def taskgate_batch(manager: TaskService, user: str, items: list[dict[str, Any]]) -> int:
    """Submit ``items`` as one batch for ``user`` (the batch API); return how many were
    accepted. The one place to change if the batch API changes."""
    answers = await manager.submit_many(user, items)
    return sum(1 for a in answers if isinstance(a, dict) and "task_id" in a)


async def _taskgate(redis_url: str, items: list[dict[str, Any]]) -> tuple[float, list[Any]]:
    settings = Settings(
        redis_url=redis_url, key_prefix=new_prefix("p2tg"), max_active=0, submit_rate=0
    )
    client = async_client(redis_url)
    records = AsyncRecords(client, settings.keys, settings.retention_s)
    # As the gateway builds it (gateway/app.py): the broker is the records' Redis, so messages
    # keep outbox copies and one script run per chunk accepts them.
    broker = OutboxBroker(
        RedisBroker(redis_url, settings.keys.broker_prefix, timeout=30), settings.keys
    )
    manager = TaskService(settings, records, broker)
    await taskgate_batch(manager, USER, items[:100])  # warm-up: scripts loaded, pools open
    started = time.perf_counter()
    accepted = await taskgate_batch(manager, USER, items)
    seconds = time.perf_counter() - started
    assert accepted == len(items), f"only {accepted} of {len(items)} accepted"
    # The same bytes for the raw push: the envelopes the broker got for this batch.
    envelopes = []
    for b in items:
        msg = build_task_message(str(uuid.uuid4()), b["task"], "fast", kwargs=b["input"])
        pri = redis_priority(msg.priority)
        envelopes.append((broker.inner.queue_key(msg.queue, pri), msg.redis_envelope(pri)))
    await manager.close()
    await broker.close()
    await client.aclose()
    return seconds, envelopes


async def _raw_push(redis_url: str, envelopes: list[tuple[str, bytes]]) -> float:
    client = async_client(redis_url)
    prefix = new_prefix("p2raw")
    async with client.pipeline(transaction=False) as pipe:  # warm-up
        pipe.lpush(prefix + "warm", b"x")
        await pipe.execute()
    started = time.perf_counter()
    async with client.pipeline(transaction=False) as pipe:
        for key, data in envelopes:
            pipe.lpush(prefix + key, data)
        await pipe.execute()
    seconds = time.perf_counter() - started
    await client.aclose()
    return seconds


def _celery_loop(redis_url: str, items: list[dict[str, Any]]) -> float:
    from worker.celery_app import make_celery

    settings = Settings(redis_url=redis_url, key_prefix=new_prefix("p2cel"))
    app = make_celery(settings)
    for b in items[:100]:  # warm-up: connection, producer pool
        app.send_task(b["task"], kwargs=b["input"], queue="fast")
    started = time.perf_counter()
    for b in items:
        app.send_task(b["task"], kwargs=b["input"], queue="fast")
    seconds = time.perf_counter() - started
    app.close()
    return seconds


def _http_batch(redis_url: str, work: Path, items: list[dict[str, Any]]) -> list[float] | None:
    """``ROUNDS`` times one ``POST /api/tasks/batch`` of all items to a gateway process, the
    seconds each took; None without the route."""
    body = orjson.dumps({"tasks": items})
    gateway, port = start_gateway(
        work, redis_url, new_prefix("p2http"), TASKGATE_MAX_BODY=str(max(len(body) * 2, 1 << 20))
    )
    try:
        token = issue_token(Secret(SECRET), USER)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        warm = orjson.dumps({"tasks": items[:100]})
        conn.request("POST", "/api/tasks/batch", warm, headers)
        resp = conn.getresponse()
        resp.read()
        if resp.status in (404, 405):
            return None
        runs = []
        for _ in range(ROUNDS):
            started = time.perf_counter()
            conn.request("POST", "/api/tasks/batch", body, headers)
            resp = conn.getresponse()
            answer = orjson.loads(resp.read())
            runs.append(time.perf_counter() - started)
            ok = sum(1 for a in answer.get("tasks", []) if "task_id" in a)
            if resp.status != 202 or ok != len(items):
                raise RuntimeError(f"batch answered {resp.status}, {ok} of {len(items)} accepted")
        conn.close()
        return runs
    finally:
        gateway.stop()


def _rates(n: int, runs: list[float]) -> str:
    return "/".join(f"{n / s:.0f}" for s in runs)


def _run(coro: Any) -> Any:
    """On uvloop, as the gateway runs."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def run(results: Results, redis_url: str, work: Path, *, n: int = N_TASKS) -> None:
    from shared.registry import load_task_modules

    load_task_modules(("worker.demo",))
    items = bodies(n)
    # The in-process systems below (taskgate, Celery's loop, the raw push) all run with the
    # garbage-collector settings the gateway process starts with.
    gctune.tune()
    # The two sub-second systems take turns, ROUNDS times, and each reports its median run: a
    # slow moment on this shared VM then weighs on both alike. Celery's loop runs once (15 s
    # of it average such moments out).
    tg_runs: list[float] = []
    raw_runs: list[float] = []
    for _ in range(ROUNDS):
        tg_s, envelopes = _run(_taskgate(redis_url, items))
        tg_runs.append(tg_s)
        raw_runs.append(_run(_raw_push(redis_url, envelopes)))
    tg_s, raw_s = statistics.median(tg_runs), statistics.median(raw_runs)
    cel_s = _celery_loop(redis_url, items)
    label = "taskgate TaskService.submit_many"
    results.add(
        "P2", label, "rate", n / tg_s, "tasks/s", seconds=tg_s, tasks=n, rounds=_rates(n, tg_runs)
    )
    results.add("P2", "celery send_task loop", "rate", n / cel_s, "tasks/s", seconds=cel_s, tasks=n)
    results.add(
        "P2",
        "raw pipelined LPUSH",
        "rate",
        n / raw_s,
        "tasks/s",
        seconds=raw_s,
        tasks=n,
        rounds=_rates(n, raw_runs),
    )
    results.ratio("P2", "taskgate batch / celery loop", cel_s, tg_s, at_least=30)
    results.ratio("P2", "taskgate batch / raw LPUSH", raw_s, tg_s, at_least=0.5)
    http_runs = _http_batch(redis_url, work, items)
    if http_runs is not None:
        http_s = statistics.median(http_runs)
        results.add(
            "P2",
            "taskgate POST /api/tasks/batch",
            "rate",
            n / http_s,
            "tasks/s",
            seconds=http_s,
            tasks=n,
            rounds=_rates(n, http_runs),
        )
        results.ratio("P2", "HTTP batch / celery loop", cel_s, http_s, at_least=30)
        results.ratio("P2", "HTTP batch / raw LPUSH", raw_s, http_s, at_least=0.5)
    else:
        results.notes.append(
            "P2: the gateway has no POST /api/tasks/batch yet; measured the "
            "batch API in process only."
        )
