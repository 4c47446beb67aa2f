"""The end-to-end scenarios again, with RabbitMQ as the Celery broker (Redis keeps the records).

One private rabbitmq-server (Debian's package) is started for this module and stopped after it;
``env`` and ``celery_worker`` are overridden here, so every end-to-end test of the Redis run
(tests/tasks/test_end_to_end.py, tests/live/test_sockets.py, tests/http/test_api.py and the
other user's 404 of tests/http/test_isolation.py) runs against a gateway publishing with
aio-pika (publisher confirms) and a worker consuming from RabbitMQ (the three that check the
order of updates are restated with one allowance, see ``_all_updates``). Then: priority 9
overtakes queued work, revoke reaches the worker over AMQP, a webhook travels through RabbitMQ,
a nack and a mute broker answer 503, and a stopped broker answers 503 with nothing accepted,
then the gateway reconnects by itself (the last test).
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestClient, TestServer
from blockbuster import blockbuster_ctx

from gateway.app import create_app
from gateway.appkeys import RELAY
from gateway.broker.amqp_broker import AmqpBroker
from gateway.broker.message import build_task_message
from shared.errors import BrokerUnavailable
from shared.settings import Settings
from tests.http import test_api as _api
from tests.http import test_isolation as _isolation
from tests.live import test_sockets as _sockets
from tests.support import (
    WEBHOOK_ENV,
    CeleryWorker,
    RabbitServer,
    RedisServer,
    SocketClient,
    auth,
    base_env,
    started,
)
from tests.tasks import test_end_to_end as _e2e

# Every end-to-end scenario of the Redis run, collected here a second time: the fixtures below
# make them run on RabbitMQ.
globals().update({name: fn for name, fn in vars(_e2e).items() if name.startswith("test_")})
globals()["test_other_user_sees_nothing_and_gets_404"] = (
    _isolation.test_other_user_sees_nothing_and_gets_404
)
globals().update({name: fn for name, fn in vars(_sockets).items() if name.startswith("test_")})
globals().update({name: fn for name, fn in vars(_api).items() if name.startswith("test_")})

user = _e2e.user
Connect = Callable[[str], Awaitable[SocketClient]]
TERMINAL = {"COMPLETED", "FAILED", "TIMED_OUT", "CANCELLED"}


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitServer]:
    with started(RabbitServer(tmp_path_factory.mktemp("rabbit"))) as server:
        yield server


@pytest.fixture(scope="module")
def env(redis_server: RedisServer, rabbit: RabbitServer) -> dict[str, str]:
    return base_env(
        redis_server.url,
        f"tgr-{uuid.uuid4().hex[:8]}:",
        CELERY_BROKER_URL=rabbit.url(),
        TASKGATE_HEARTBEAT_S="2",
        **WEBHOOK_ENV,
    )


@pytest.fixture(scope="module")
def celery_worker(env: dict[str, str], log_dir: Path) -> Iterator[CeleryWorker]:
    with started(CeleryWorker(env, log_dir)) as worker:
        yield worker


async def _poll_terminal(
    http: TestClient | ClientSession, base: str, task_id: str, who: str, timeout: float = 30
) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            resp = await http.get(f"{base}/api/tasks/{task_id}", headers=auth(who))
            snap: dict[str, Any] = await resp.json()
            if snap["status"] in TERMINAL:
                return snap
            await asyncio.sleep(0.1)


# On RabbitMQ the gateway announces PENDING (seq 1) once the broker confirmed the message, and
# RabbitMQ confirms a persistent message only once it is on disk (or acked): a short task may
# be running, even finished, by then. The gateway then drops that late update (its room was sent
# a newer seq: gateway.live.ledger), and the submitter has PENDING from the answer anyway. So
# here seq 1 arrives at most once and only first; every later seq arrives once and in order.


async def _all_updates(client: SocketClient, task_id: str) -> list[dict[str, Any]]:
    final = await client.wait_terminal(task_id)
    await client.wait_for(lambda: len(client.events[task_id]) >= final["seq"] - 1, timeout=5)
    events = client.events[task_id]
    _e2e.assert_ordered(events)
    seqs = [e["seq"] for e in events]
    assert seqs in (list(range(1, final["seq"] + 1)), list(range(2, final["seq"] + 1))), seqs
    assert [e["status"] for e in events if e["seq"] <= 2] in (["PENDING", "RUNNING"], ["RUNNING"])
    return events


async def test_http_submit_runs_to_completion_with_ordered_updates(
    http: TestClient, sockets: Connect
) -> None:
    await _e2e.check_http_submit(http, sockets, _all_updates)


async def test_socket_submit_gets_ack_and_every_update(sockets: Connect) -> None:
    client = await sockets(user())
    # 60 ms a step: slower than the workers' progress rate (20/s), so every step is published.
    body = {"task": "demo.count", "input": {"steps": 3, "delay": 0.06}}
    ack = await client.call("submit", body)
    assert "error" not in ack and ack["status"] == "PENDING" and ack["seq"] == 1
    events = await _all_updates(client, ack["task_id"])
    assert [e["seq"] for e in events][-5:] == list(range(2, 7))
    assert events[-1]["status"] == "COMPLETED" and events[-1]["result"] == {"counted": 3}


async def test_failing_task_ends_failed_with_its_message(sockets: Connect) -> None:
    client = await sockets(user())
    ack = await client.call(
        "submit", {"task": "demo.fail", "input": {"message": "boom", "after": 2}}
    )
    final = (await _all_updates(client, ack["task_id"]))[-1]
    assert final["status"] == "FAILED"
    assert final["error"] == {"type": "DemoFailure", "message": "boom"}
    assert final["result"] is None


async def test_amqp_gateway_is_ready(http: TestClient) -> None:
    resp = await http.get("/readyz")
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["broker"] == "ok"


async def test_revoke_reaches_the_worker_over_amqp(
    http: TestClient, sockets: Connect, celery_worker: CeleryWorker
) -> None:
    alice = user()
    client = await sockets(alice)
    ack = await client.call("submit", {"task": "demo.sleep", "input": {"seconds": 30}})
    task_id = ack["task_id"]
    await client.wait_for(lambda: any(e["status"] == "RUNNING" for e in client.events[task_id]))
    assert (await http.delete(f"/api/tasks/{task_id}", headers=auth(alice))).status == 202
    assert (await client.wait_terminal(task_id, timeout=10))["status"] == "CANCELLED"
    # Celery's revoke is a broadcast on the broker's pidbox exchange: the worker logs it.
    async with asyncio.timeout(15):
        while True:
            log = await asyncio.to_thread(celery_worker.log.read_text, errors="replace")
            if f"revoked: {task_id}" in log:
                break
            await asyncio.sleep(0.1)


async def test_webhook_is_delivered_over_amqp(
    http: TestClient, aiohttp_server: Callable[..., Awaitable[TestServer]]
) -> None:
    """The delivery task travels on its own queue (``taskgate.webhooks``) through RabbitMQ."""
    calls: list[bytes] = []

    async def hook(request: web.Request) -> web.Response:
        calls.append(await request.read())
        return web.Response(status=500 if len(calls) == 1 else 200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    receiver = await aiohttp_server(app, host="127.0.0.1")
    alice = user()
    resp = await http.post(
        "/api/tasks",
        json={
            "task": "demo.count",
            "input": {"steps": 1, "delay": 0},
            "callback_url": str(receiver.make_url("/hook")),
        },
        headers=auth(alice),
    )
    assert resp.status == 202, await resp.text()
    task_id = (await resp.json())["task_id"]
    async with asyncio.timeout(30):
        while True:
            snap = await (await http.get(f"/api/tasks/{task_id}", headers=auth(alice))).json()
            if snap["webhook"]["state"] != "pending":
                break
            await asyncio.sleep(0.05)
    assert snap["webhook"]["state"] == "delivered" and snap["webhook"]["attempts"] == 2
    assert len(calls) == 2


def _kombu_declares(settings: Settings, queue: str) -> None:
    """Declare ``queue`` exactly as the workers' kombu does (raises on PRECONDITION_FAILED)."""
    from worker.celery_app import make_celery

    app = make_celery(settings)
    with app.connection_for_write() as conn:
        app.amqp.queues[queue](conn.default_channel).declare()


async def test_a_nack_is_a_503_and_a_silent_broker_times_out(
    rabbit: RabbitServer, redis_server: RedisServer
) -> None:
    """RabbitMQ itself refuses (a queue full with reject-publish nacks); a mute peer times out."""
    vhost = f"full-{uuid.uuid4().hex[:8]}"
    url = await asyncio.to_thread(rabbit.add_vhost, vhost)
    await asyncio.to_thread(
        rabbit.ctl_run, "set_policy", "-p", vhost, "--apply-to", "queues", "full", "^fast$",
        '{"max-length": 0, "overflow": "reject-publish"}',
    )  # fmt: skip
    broker = AmqpBroker(url, timeout=3)
    message = build_task_message(str(uuid.uuid4()), "demo.count", "fast", kwargs={"steps": 1})
    try:
        with pytest.raises(BrokerUnavailable, match="refused"):
            await broker.publish([message])
        # The broker is fine otherwise: a queue without the policy takes the message.
        await broker.publish([build_task_message(str(uuid.uuid4()), "demo.primes", "heavy")])
        assert (await broker.queue_depths(["fast", "heavy"])) == {"fast": 0, "heavy": 1}
        # The gateway declared "heavy" first; the workers' declaration must agree with it.
        settings = Settings.from_env(base_env(redis_server.url, "tgn:", CELERY_BROKER_URL=url))
        await asyncio.to_thread(_kombu_declares, settings, "heavy")
    finally:
        await broker.close()

    mute = socket.socket()
    mute.bind(("127.0.0.1", 0))
    mute.listen()  # accepts connections (the kernel does), never says a word
    try:
        silent = AmqpBroker(f"amqp://guest:guest@127.0.0.1:{mute.getsockname()[1]}/", timeout=1)
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            await silent.publish([message])
        assert time.monotonic() - started < 3
        await silent.close()
    finally:
        mute.close()


@pytest.fixture
async def priority_gateway(
    rabbit: RabbitServer,
    redis_server: RedisServer,
    log_dir: Path,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> AsyncIterator[TestServer]:
    """A vhost of its own, one worker with one process (the only consumer), and a gateway."""
    vhost_url = await asyncio.to_thread(rabbit.add_vhost, f"prio-{uuid.uuid4().hex[:8]}")
    env = base_env(redis_server.url, f"tgp-{uuid.uuid4().hex[:8]}:", CELERY_BROKER_URL=vhost_url)
    worker = await asyncio.to_thread(CeleryWorker(env, log_dir, queues="fast", concurrency=1).start)
    try:
        server = await aiohttp_server(create_app(Settings.from_env(env)))
        await asyncio.wait_for(server.app[RELAY].connected.wait(), 10)
        with blockbuster_ctx():
            yield server
    finally:
        await asyncio.to_thread(worker.stop)


async def test_priority_9_overtakes_queued_low_priority_tasks(
    priority_gateway: TestServer,
) -> None:
    alice = user()
    base = str(priority_gateway.make_url("")).rstrip("/")
    async with ClientSession() as http:

        async def submit(body: dict[str, Any]) -> str:
            resp = await http.post(f"{base}/api/tasks", json=body, headers=auth(alice))
            assert resp.status == 202, await resp.text()
            task_id: str = (await resp.json())["task_id"]
            return task_id

        # Occupy the only worker process, so everything after it waits in the queue.
        blocker = await submit({"task": "demo.sleep", "input": {"seconds": 1.5}})
        async with asyncio.timeout(20):
            while True:
                resp = await http.get(f"{base}/api/tasks/{blocker}", headers=auth(alice))
                if (await resp.json())["status"] == "RUNNING":
                    break
                await asyncio.sleep(0.05)
        low = [
            await submit({"task": "demo.count", "input": {"steps": 1, "delay": 0}, "priority": 0})
            for _ in range(8)
        ]
        urgent = await submit(
            {"task": "demo.count", "input": {"steps": 1, "delay": 0}, "priority": 9}
        )
        snaps = {t: await _poll_terminal(http, base, t, alice) for t in [blocker, *low, urgent]}

    assert all(s["status"] == "COMPLETED" for s in snaps.values())
    order = sorted(snaps, key=lambda t: snaps[t]["started_at"])
    assert order[0] == blocker
    assert order[1] == urgent, [("urgent" if t == urgent else "low") for t in order]


async def test_stopped_broker_answers_503_and_accepts_nothing(
    http: TestClient, rabbit: RabbitServer
) -> None:
    """Runs last in this module: it stops the broker, then starts it again."""
    alice = user()
    body = {"task": "demo.count", "input": {"steps": 1, "delay": 0}}
    first = await http.post("/api/tasks", json=body, headers=auth(alice))
    assert first.status == 202
    await asyncio.to_thread(rabbit.stop)
    try:
        started = time.monotonic()
        resp = await http.post("/api/tasks", json=body, headers=auth(alice))
        assert resp.status == 503, await resp.text()
        assert (await resp.json())["error"]["code"] == "broker_unavailable"
        assert time.monotonic() - started < 5
        ready = await http.get("/readyz")
        assert ready.status == 503 and (await ready.json())["broker"] != "ok"
        listed = await (await http.get("/api/tasks", headers=auth(alice))).json()
        assert [t["task_id"] for t in listed["tasks"]] == [(await first.json())["task_id"]]
    finally:
        await asyncio.to_thread(rabbit.start)
    # The gateway reconnects on its own, and the worker picks the work up again.
    again = await http.post("/api/tasks", json=body, headers=auth(alice))
    assert again.status == 202, await again.text()
    task_id = (await again.json())["task_id"]
    final = await _poll_terminal(http, "", task_id, alice, timeout=60)
    assert final["status"] == "COMPLETED"
