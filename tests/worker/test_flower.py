"""Flower works unchanged: `celery -A worker flower` sees the workers and taskgate's tasks, and
the tasks the gateway publishes show as sent (its own ``task-sent`` events,
``gateway.broker.sent_events``) as they do for Celery's own ``send_task``; with
``CELERY_TASK_SEND_SENT_EVENT=0`` none is sent, and what the events thread drops is counted on
``GET /metrics``."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from blockbuster import blockbuster_ctx

from gateway.app import create_app
from gateway.appkeys import BROKER, RELAY
from gateway.broker.message import build_task_message
from gateway.broker.outbox import OutboxBroker
from gateway.broker.redis_broker import RedisBroker
from gateway.broker.sent_events import SentEvents, open_sent_events, sent_event
from gateway.cli.embedded import free_port, wait_for_port
from shared.settings import Settings
from tests.support import (
    ROOT,
    CeleryWorker,
    auth,
    isolated_env,
    offline_env,
    serve_gateway,
    wait_until,
)

ServerFactory = Callable[..., Awaitable[TestServer]]
ClientFactory = Callable[..., Awaitable[TestClient]]


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def flower(
    env: dict[str, str], celery_worker: CeleryWorker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A real Flower on the session's broker, once it sees the session's worker: its base URL."""
    port = free_port()
    folder = tmp_path_factory.mktemp("flower")
    log = open(folder / "flower.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "celery", "-A", "worker", "flower",
            f"--port={port}", "--address=127.0.0.1", "--persistent=False",
            f"--db={folder / 'flower.db'}",
        ],
        env={**env, "FLOWER_UNAUTHENTICATED_API": "true"},
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for_port(port, 30, proc)
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: celery_worker.name in str(_get(f"{base}/api/workers?refresh=1")), 30)
        yield base
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_flower_sees_workers_and_tasks(env: dict[str, str], flower: str) -> None:
    # Run a task the taskgate way (through the registered Celery task); Flower's event
    # stream shows it by name.
    from celery import Celery

    from worker.celery_app import make_celery

    app: Celery = make_celery(Settings.from_env(env))
    task_id = str(uuid.uuid4())
    app.send_task("demo.add", kwargs={"value": 1}, task_id=task_id, queue="fast")
    wait_until(lambda: task_id in str(_get(f"{flower}/api/tasks")), 30)
    tasks = _get(f"{flower}/api/tasks")
    assert isinstance(tasks, dict) and tasks[task_id]["name"] == "demo.add"


async def _flower_task(
    session: aiohttp.ClientSession,
    base: str,
    task_id: str,
    state: str,
    timeout: float = 30,
    *,
    sent: bool = False,
) -> dict[str, Any]:
    """Flower's record of ``task_id`` once it is in ``state`` (and, with ``sent``, once its
    task-sent event arrived too: the gateway's events thread may deliver it after the worker's
    own events, and Flower then fills ``sent`` in without moving the state back)."""
    deadline = time.monotonic() + timeout
    info: dict[str, Any] = {}
    while time.monotonic() < deadline:
        async with session.get(f"{base}/api/task/info/{task_id}") as resp:
            if resp.status == 200:
                info = await resp.json()
                if info.get("state") == state and (info.get("sent") or not sent):
                    return info
        await asyncio.sleep(0.1)
    raise AssertionError(f"Flower has not seen {task_id} {state} in {timeout}s: {info}")


@pytest.mark.parametrize("broker", ["outbox", "apart"])
async def test_tasks_the_gateway_publishes_show_as_sent_in_flower(
    env: dict[str, str],
    celery_worker: CeleryWorker,
    flower: str,
    aiohttp_server: ServerFactory,
    aiohttp_client: ClientFactory,
    broker: str,
) -> None:
    """``outbox``: the default, the broker on the records' Redis (a submit's message is pushed by
    the record script); ``apart``: the broker named by another URL of the same Redis, so the
    gateway publishes apart from the records (``AnnouncingBroker``)."""
    extra = {}
    if broker == "apart":
        extra["CELERY_BROKER_URL"] = env["TASKGATE_REDIS_URL"].removesuffix("/0")
    settings = Settings.from_env({**env, **extra})
    http = await aiohttp_client(await serve_gateway(aiohttp_server, settings))
    who = f"fl-{uuid.uuid4().hex[:6]}"
    bodies: dict[str, dict[str, Any]] = {
        "single": {"task": "demo.add", "input": {"value": 2}},
        # the idempotent path: the record first, then the broker's publish
        "keyed": {"task": "demo.add", "input": {"value": 3}, "idempotency_key": who},
        # published when due, by the delayed tasks' mover
        "delayed": {"task": "demo.add", "input": {"value": 4}, "countdown": 1},
    }
    ids = {}
    with blockbuster_ctx():  # nothing of it blocks the gateway's loop
        for kind, body in bodies.items():
            resp = await http.post("/api/tasks", json=body, headers=auth(who))
            assert resp.status == 202, await resp.text()
            ids[kind] = (await resp.json())["task_id"]
        resp = await http.post(
            "/api/tasks/batch", json={"tasks": [{"task": "demo.add"}] * 3}, headers=auth(who)
        )
        assert resp.status == 202
        for n, item in enumerate((await resp.json())["tasks"]):
            ids[f"batch {n}"] = item["task_id"]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        for kind, task_id in ids.items():
            info = await _flower_task(session, flower, task_id, "SUCCESS", sent=True)
            # Sent by the gateway (the client of the event), received and run by the worker.
            assert info["sent"] and info["received"] and info["succeeded"], (kind, info)
            assert info["sent"] <= info["received"], (kind, info)
            assert info["client"].startswith("taskgate@"), (kind, info)
            assert info["name"] == "demo.add" and info["routing_key"] == "fast", (kind, info)
            value = bodies.get(kind, {}).get("input", {}).get("value", 0.0)
            assert f"'value': {float(value)}" in info["kwargs"], (kind, info)


def _messages(count: int) -> list[Any]:
    return [
        build_task_message(str(uuid.uuid4()), "demo.add", "fast", kwargs={"value": i})
        for i in range(count)
    ]


def test_an_event_has_the_fields_of_celerys_own() -> None:
    message = build_task_message("t-1", "demo.add", "heavy", kwargs={"value": 1}, parent_id="p")
    event = sent_event(message, 123.0)
    assert event == {
        "uuid": "t-1",
        "root_id": "t-1",
        "parent_id": "p",
        "name": "demo.add",
        "args": "[]",
        "kwargs": "{'value': 1}",
        "retries": 0,
        "eta": None,
        "expires": None,
        "queue": "heavy",
        "exchange": "",
        "routing_key": "heavy",
        "timestamp": 123.0,
    }


async def test_an_unreachable_broker_never_blocks_or_fails_an_announce() -> None:
    """Events for a broker on a closed port: announce returns at once on the loop (blockbuster
    fails any blocking call there), a full queue drops and counts, the thread drops what it
    cannot send, backs off, and stops when closed."""
    events = SentEvents(Settings.from_env(offline_env()), capacity=5)
    with blockbuster_ctx():
        events.announce(_messages(3))
        events.announce(_messages(4))  # 2 of them fit
        events.announce(_messages(1))
    assert (events.dropped_full, events.waiting) == (3, 5)
    events.start()
    try:
        # The thread met the closed port (and backs off).
        await asyncio.to_thread(wait_until, lambda: events.dropped_offline > 0, 10)
        with blockbuster_ctx():
            events.announce(_messages(2))  # while it backs off
    finally:
        await asyncio.to_thread(events.close)
    assert events.sent == 0 and events.waiting == 0
    assert events.dropped == 10


def _event_threads() -> set[int | None]:
    return {t.ident for t in threading.enumerate() if t.name == "taskgate-sent-events"}


async def test_with_sent_events_off_no_thread_runs_and_flower_sees_no_sent(
    env: dict[str, str],
    celery_worker: CeleryWorker,
    flower: str,
    aiohttp_server: ServerFactory,
    aiohttp_client: ClientFactory,
) -> None:
    async with open_sent_events(Settings.from_env(env)) as events:
        assert isinstance(events, SentEvents) and _event_threads()  # on by default
    before = _event_threads()
    settings = Settings.from_env({**env, "CELERY_TASK_SEND_SENT_EVENT": "0"})
    async with open_sent_events(settings) as events:
        assert events is None and _event_threads() <= before
    server = await serve_gateway(aiohttp_server, settings)
    assert type(server.app[BROKER]) is OutboxBroker  # not wrapped
    assert _event_threads() <= before
    http = await aiohttp_client(server)
    body = {"task": "demo.add", "input": {"value": 5}}
    resp = await http.post("/api/tasks", json=body, headers=auth("fl-off"))
    assert resp.status == 202, await resp.text()
    task_id = (await resp.json())["task_id"]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        info = await _flower_task(session, flower, task_id, "SUCCESS")
    # Received and run by the worker, never announced as sent.
    assert info["received"] and info["succeeded"] and not info["sent"], info
    assert _event_threads() <= before


_SENT_EVENTS = re.compile(r'^taskgate_sent_events_total\{outcome="(\w+)"\} (\S+)$', re.M)


async def test_events_the_broker_does_not_take_are_counted_on_metrics(
    env: dict[str, str], aiohttp_server: ServerFactory, aiohttp_client: ClientFactory
) -> None:
    """The gateway publishes through a broker that works (handed to it), while its events go
    to the broker ``CELERY_BROKER_URL`` names, on a closed port: each is dropped as offline,
    and ``GET /metrics`` shows the count rise."""
    settings = Settings.from_env(isolated_env(env, CELERY_BROKER_URL="redis://127.0.0.1:1/0"))
    broker = RedisBroker(settings.require_redis(), settings.keys.broker_prefix)
    server = await aiohttp_server(create_app(settings, broker=broker))
    async with asyncio.timeout(10):
        await server.app[RELAY].connected.wait()
    http = await aiohttp_client(server)

    async def outcomes() -> dict[str, float]:
        resp = await http.get("/metrics")
        assert resp.status == 200
        return {name: float(value) for name, value in _SENT_EVENTS.findall(await resp.text())}

    async def dropped_offline_reaches(count: float) -> dict[str, float]:
        deadline = time.monotonic() + 30
        while (seen := await outcomes())["dropped_offline"] < count:
            assert time.monotonic() < deadline, f"dropped_offline not at {count}: {seen}"
            await asyncio.sleep(0.1)
        return seen

    assert await outcomes() == {"sent": 0, "dropped_full": 0, "dropped_offline": 0}
    resp = await http.post("/api/tasks", json={"task": "demo.add"}, headers=auth("fl-away"))
    assert resp.status == 202, await resp.text()
    assert await dropped_offline_reaches(1) == {"sent": 0, "dropped_full": 0, "dropped_offline": 1}
    resp = await http.post(
        "/api/tasks/batch", json={"tasks": [{"task": "demo.add"}] * 2}, headers=auth("fl-away")
    )
    assert resp.status == 202, await resp.text()
    assert await dropped_offline_reaches(3) == {"sent": 0, "dropped_full": 0, "dropped_offline": 3}
