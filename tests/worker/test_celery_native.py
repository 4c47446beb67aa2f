"""Celery-native use (issue 14, item 1): messages sent with Celery's own API get their record
when a stock worker takes them, and run with progress, status and result like any other.

The producer is a plain Python process using Celery's API (``send_task`` and ``.delay()``),
as a team with an existing Celery codebase would; the owner watches on a real socket.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import redis
from aiohttp.test_utils import TestServer

from shared.registry import get_task
from shared.settings import Settings
from tests.support import ROOT, RedisServer, SocketClient, auth, base_env
from worker.celery_app import make_celery
from worker.maintenance import SWEEP_TASK
from worker.webhooks import WEBHOOK_TASK

Connect = Callable[[str], Awaitable[SocketClient]]

PRODUCER = """
import json, sys
from shared.settings import Settings
from worker.celery_app import make_celery

app = make_celery(Settings.from_env())
how, name, owner = sys.argv[1], sys.argv[2], sys.argv[3]
headers = {"taskgate_user": owner} if owner else {}
kwargs = json.loads(sys.argv[4])
if how == "send_task":
    result = app.send_task(name, kwargs=kwargs, queue="fast", headers=headers)
else:
    result = app.tasks[name].apply_async(kwargs=kwargs, headers=headers)
print(result.id)
"""


def produce(env: dict[str, str], how: str, name: str, owner: str, kwargs: dict[str, Any]) -> str:
    """Send one message from a separate Python process; its task id."""
    out = subprocess.run(
        [sys.executable, "-c", PRODUCER, how, name, owner, json.dumps(kwargs)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


async def poll_terminal(
    session: aiohttp.ClientSession, url: str, owner: str, task_id: str, timeout: float = 30
) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            async with session.get(f"{url}api/tasks/{task_id}", headers=auth(owner)) as resp:
                if resp.status == 200:
                    snap: dict[str, Any] = await resp.json()
                    if snap["status"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"):
                        return snap
            await asyncio.sleep(0.1)


async def test_send_task_and_delay_from_a_plain_producer_run_and_report(
    env: dict[str, str], gateway: TestServer, sockets: Connect
) -> None:
    owner = f"team-{uuid.uuid4().hex[:6]}"
    client = await sockets(owner)
    url = str(gateway.make_url("/"))
    ids = {}
    for how in ("send_task", "delay"):
        ids[how] = await asyncio.to_thread(
            produce, env, how, "demo.count", owner, {"steps": 3, "delay": 0.05}
        )
    async with aiohttp.ClientSession() as session:
        for how, task_id in ids.items():
            final = await client.wait_terminal(task_id, timeout=30)
            assert final["status"] == "COMPLETED", (how, final)
            assert final["result"] == {"counted": 3}
            # Live updates on the owner's socket: RUNNING, progress, then the end, seq rising.
            seqs = [e["seq"] for e in client.events[task_id]]
            assert seqs == sorted(seqs) and len(seqs) >= 3, (how, seqs)
            assert any(e["status"] == "RUNNING" for e in client.events[task_id])
            polled = await poll_terminal(session, url, owner, task_id)
            assert polled == final
            # ... and in the owner's list.
            async with session.get(f"{url}api/tasks?limit=50", headers=auth(owner)) as resp:
                listed = [s["task_id"] for s in (await resp.json())["tasks"]]
            assert task_id in listed


async def test_a_message_without_owner_belongs_to_the_service_user(
    env: dict[str, str], gateway: TestServer
) -> None:
    task_id = await asyncio.to_thread(produce, env, "send_task", "demo.count", "", {"steps": 1})
    url = str(gateway.make_url("/"))
    async with aiohttp.ClientSession() as session:
        final = await poll_terminal(session, url, "service", task_id)
        assert final["status"] == "COMPLETED" and final["result"] == {"counted": 1}
        async with session.get(f"{url}api/tasks/{task_id}", headers=auth("someone")) as resp:
            assert resp.status == 404


async def test_an_unregistered_name_ends_failed_unknown_task_not_silent_success(
    env: dict[str, str], gateway: TestServer
) -> None:
    owner = f"team-{uuid.uuid4().hex[:6]}"
    task_id = await asyncio.to_thread(produce, env, "send_task", "reports.nope", owner, {})
    url = str(gateway.make_url("/"))
    async with aiohttp.ClientSession() as session:
        final = await poll_terminal(session, url, owner, task_id)
    assert final["status"] == "FAILED"
    assert final["error"]["type"] == "UnknownTask"
    assert "reports.nope" in final["error"]["message"]
    assert final["task"] == "reports.nope"


def test_celery_s_own_sends_go_to_the_task_s_queue_and_follow_taskgate_routes(
    redis_server: RedisServer,
) -> None:
    """Celery's router on the worker's app, publishing to a real Redis broker that no worker
    reads: a task object's ``.apply_async()`` and a bare ``send_task`` land where the gateway
    would send them, ``TASKGATE_ROUTES`` first, then the task's own queue; and building the app
    warns of no deprecated task attribute (Celery 6 drops ``queue=`` on tasks)."""
    extra = {"TASKGATE_QUEUES": "fast,heavy,reports", "TASKGATE_ROUTES": "demo.count=reports"}
    env = base_env(redis_server.url, f"tg-route-{uuid.uuid4().hex[:8]}:", **extra)
    settings = Settings.from_env(env)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        app = make_celery(settings)
    assert not [w for w in caught if "task attribute" in str(w.message)], caught
    store = redis.Redis.from_url(redis_server.url)

    def depth(queue: str) -> int:
        return sum(int(store.llen(key)) for key in settings.keys.broker_queues(queue))

    try:
        app.tasks["demo.count"].apply_async(kwargs={"steps": 1})  # routed
        app.tasks["demo.add"].apply_async(kwargs={"value": 1})  # its own: fast
        app.send_task("demo.primes", kwargs={"limit": 10})  # by name, its own: heavy
        app.send_task("demo.add", kwargs={"value": 1}, queue="heavy")  # named: as asked
        assert {q: depth(q) for q in ("fast", "heavy", "reports")} == {
            "fast": 1,
            "heavy": 2,
            "reports": 1,
        }
        # The gateway's choice for the same names agrees.
        assert get_task("demo.count").default_queue(settings.routes) == "reports"
        assert get_task("demo.primes").default_queue(settings.routes) == "heavy"
    finally:
        for queue in ("fast", "heavy", "reports"):
            store.delete(*settings.keys.broker_queues(queue))
        store.close()
        app.close()


def test_two_apps_in_one_process_each_have_their_own_tasks(redis_server: RedisServer) -> None:
    """``make_celery`` twice in one process (a test suite, a producer with two settings): each
    app's tasks are its own, bound to its settings, not the first app's closures that Celery's
    shared tasks would hand every later app (with a DuplicateTaskNameWarning)."""
    apps = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            env = base_env(redis_server.url, f"tg-apps-{uuid.uuid4().hex[:8]}:")
            apps.append(make_celery(Settings.from_env(env)))
        first, second = (app.tasks for app in apps)
    try:
        assert not [w for w in caught if "already registered" in str(w.message)], caught
        for name in ("demo.count", SWEEP_TASK, WEBHOOK_TASK):
            assert first[name] is not second[name], name
            assert first[name]._decorated_fun is not second[name]._decorated_fun, name
            assert second[name].app is apps[1], name
    finally:
        for app in apps:
            app.close()
