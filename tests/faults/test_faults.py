"""Nothing a user is owed is lost (issue 3): each promise, proved by killing or stopping a real
process: redis-server, a Celery worker (or one of its pool processes), a gateway, a client.

This module runs its own redis-server and workers, so what it kills never touches the other
tests. Limits are short so that faults resolve quickly: soft 6 s, hard 8 s (billiard needs ~3 s
to notice a killed pool process), visibility timeout 10 s, worker heartbeat every 0.5 s (stalled
after 1.5 s), at most 3 runs per task.
docs/RELIABILITY.md maps every promise to its test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer
from blockbuster import blockbuster_ctx

from gateway.app import create_app
from gateway.appkeys import RELAY
from shared.settings import Settings
from tests.support import (
    FAULT_ENV,
    CeleryWorker,
    GatewayProcess,
    RedisServer,
    SocketClient,
    applied_updates,
    auth,
    base_env,
    make_token,
    reconnecting,
)

pytestmark = pytest.mark.timeout(90)

TERMINAL = {"COMPLETED", "FAILED", "TIMED_OUT", "CANCELLED"}


def user() -> str:
    return f"f-{uuid.uuid4().hex[:8]}"


class Stack:
    """A redis-server and Celery workers of this module's own, to kill at will."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.redis = RedisServer(tmp / "redis").start()
        self.prefix = f"tgf-{uuid.uuid4().hex[:8]}:"
        self.env = base_env(self.redis.url, self.prefix, **FAULT_ENV)
        self.settings = Settings.from_env(self.env)
        self.worker: CeleryWorker | None = None
        self.sync = redis.Redis.from_url(self.redis.url)

    def start_worker(self, **kw: Any) -> CeleryWorker:
        self.worker = CeleryWorker(self.env, self.tmp, **kw).start()
        return self.worker

    def ensure_worker(self) -> CeleryWorker:
        if self.worker is None or self.worker.proc is None or self.worker.proc.poll() is not None:
            return self.start_worker()
        return self.worker

    def stop_worker(self, sig: int = signal.SIGTERM) -> None:
        if self.worker is not None:
            self.worker.stop(sig)
            self.worker = None

    def record(self, task_id: str) -> dict[str, str]:
        raw = self.sync.hgetall(self.settings.keys.task(task_id))
        return {k.decode(): v.decode() for k, v in raw.items()}  # type: ignore[union-attr]

    def close(self) -> None:
        self.stop_worker(signal.SIGKILL)
        self.sync.close()
        self.redis.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("faults"))
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def worker(stack: Stack) -> CeleryWorker:
    """The stack's worker, started again if an earlier test killed it."""
    return stack.ensure_worker()


@pytest.fixture
async def gw(
    stack: Stack, aiohttp_server: Callable[..., Awaitable[TestServer]]
) -> AsyncIterator[TestServer]:
    yield await aiohttp_server(create_app(stack.settings))


Connect = Callable[..., Awaitable[SocketClient]]


@pytest.fixture
async def sockets() -> AsyncIterator[Connect]:
    clients: list[SocketClient] = []

    async def connect(url: str, name: str) -> SocketClient:
        client = await SocketClient(url, make_token(name)).connect()
        clients.append(client)
        return client

    yield connect
    for client in clients:
        if client.sio.connected:
            await client.close()


async def submit(base: str, name: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base}/api/tasks", json=body, headers=auth(name)) as resp,
    ):
        return resp.status, await resp.json()


async def submit_retrying(
    base: str, name: str, body: dict[str, Any], timeout: float = 10.0
) -> dict[str, Any]:
    """Submit as a client should after a 503: again, a little later, until accepted."""
    deadline = time.monotonic() + timeout
    while True:
        status, answer = await submit(base, name, body)
        if status == 202:
            return answer
        assert status == 503 and time.monotonic() < deadline, (status, answer)
        await asyncio.sleep(0.2)


async def get_task(base: str, name: str, task_id: str) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base}/api/tasks/{task_id}", headers=auth(name)) as resp,
    ):
        return resp.status, await resp.json()


def terminal_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["status"] in TERMINAL]


def check_stream(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the owner applied: seq rising, percent never back, one terminal update, last."""
    applied = applied_updates(events)
    pcts = [e["progress"]["percent"] for e in applied]
    assert pcts == sorted(pcts), pcts
    ends = terminal_events(applied)
    assert len(ends) == 1 and applied[-1] is ends[0], [(e["seq"], e["status"]) for e in applied]
    return applied


async def until(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 (polls state outside this loop)
            await asyncio.sleep(step)


def base(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


# ---- 1. Accepted means the broker has it ------------------------------------------------------


async def _measure_while(
    session: aiohttp.ClientSession, base_url: str, name: str
) -> tuple[int, float, list[float]]:
    """Submit once while polling /healthz every 20 ms; (status, seconds, healthz latencies)."""
    latencies: list[float] = []
    done = asyncio.Event()

    async def poll() -> None:
        while not done.is_set():
            t0 = time.perf_counter()
            async with session.get(f"{base_url}/healthz") as resp:
                assert resp.status == 200
            latencies.append(time.perf_counter() - t0)
            await asyncio.sleep(0.02)

    poller = asyncio.create_task(poll())
    await asyncio.sleep(0.2)
    t0 = time.perf_counter()
    body = {"task": "demo.count", "input": {"steps": 1}}
    async with session.post(f"{base_url}/api/tasks", json=body, headers=auth(name)) as resp:
        status = resp.status
        payload = await resp.json()
    elapsed = time.perf_counter() - t0
    await asyncio.sleep(0.3)
    done.set()
    await poller
    if status == 503:
        # The broker is the records' Redis here: the store is what is down.
        assert payload["error"]["code"] == "store_unavailable"
    return status, elapsed, latencies


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def test_broker_down_answers_503_within_5s_and_healthz_stays_fast(
    tmp_path: Path, aiohttp_server: Callable[..., Awaitable[TestServer]]
) -> None:
    server = await asyncio.to_thread(RedisServer(tmp_path / "broker").start)
    prefix = f"tgb-{uuid.uuid4().hex[:8]}:"
    settings = Settings.from_env(base_env(server.url, prefix, **FAULT_ENV))
    gateway = await aiohttp_server(create_app(settings))
    relay = gateway.app[RELAY]
    # Short pings, so the frozen server below is noticed while it is frozen (default 5 s + 3 s).
    relay.ping_interval = relay.ping_timeout = 0.5
    url = base(gateway)
    name = user()
    check = aioredis.Redis.from_url(server.url)
    try:
        async with aiohttp.ClientSession() as session:
            # Up: 202 only once the message is on the broker's list.
            status, body = await submit(url, name, {"task": "demo.count", "input": {"steps": 1}})
            assert status == 202
            queued = [
                m
                async for key in check.scan_iter(match=f"{prefix}broker:fast*")
                for m in await check.lrange(key, 0, -1)
            ]
            assert any(body["task_id"].encode() in m for m in queued)

            for how in ("frozen", "stopped"):
                assert server.proc is not None
                if how == "frozen":
                    os.kill(server.proc.pid, signal.SIGSTOP)
                else:
                    await asyncio.to_thread(server.stop)
                try:
                    # Anything that blocks the loop meanwhile fails the test.
                    with blockbuster_ctx():
                        status, elapsed, latencies = await _measure_while(session, url, name)
                finally:
                    if how == "frozen":
                        os.kill(server.proc.pid, signal.SIGCONT)
                if how == "frozen":
                    # The relay's connection never broke, yet its pings found it dead.
                    await until(lambda: relay.reconnects >= 1 and relay.connected.is_set(), 10)
                assert status == 503, (how, status)
                assert elapsed < 5.0, (how, elapsed)
                assert len(latencies) >= 10 and p99(latencies) < 0.1, (how, p99(latencies))

            # Back: accepted again (the client reconnects on its own).
            server = await asyncio.to_thread(
                RedisServer(tmp_path / "broker", port=server.port).start
            )
            await submit_retrying(url, name, {"task": "demo.count", "input": {}})
    finally:
        await check.aclose()
        await asyncio.to_thread(server.stop)


# ---- 2. At least once across worker crashes ---------------------------------------------------


async def twenty_steps(
    gw: TestServer, sockets: Connect, tmp_path: Path
) -> tuple[SocketClient, Path, str]:
    """``faults.steps`` (20 steps of 0.1 s, each run logged in ``runs``) submitted for a new
    user with a socket: the socket, the run log and the task id."""
    name, runs = user(), tmp_path / "runs"
    client = await sockets(base(gw), name)
    body = {"task": "faults.steps", "input": {"steps": 20, "delay": 0.1, "path": str(runs)}}
    status, snap = await submit(base(gw), name, body)
    assert status == 202
    return client, runs, snap["task_id"]


def ran_again_once(stack: Stack, events: list[dict[str, Any]], runs: Path, task_id: str) -> None:
    """After a run was lost and delivered again: a clean stream with one terminal update, two
    runs in the task's log, and the record on its second attempt."""
    check_stream(events)
    assert len(terminal_events(events)) == 1
    assert len(runs.read_text().splitlines()) == 2
    assert stack.record(task_id)["_attempt"] == "2"


async def test_killed_pool_process_reruns_and_owner_sees_one_end(
    stack: Stack, worker: CeleryWorker, gw: TestServer, sockets: Connect, tmp_path: Path
) -> None:
    client, runs, task_id = await twenty_steps(gw, sockets, tmp_path)
    events = client.events[task_id]
    await client.wait_for(lambda: any(e["progress"]["data"].get("pid") for e in events), 10)
    pid = next(e["progress"]["data"]["pid"] for e in events if e["progress"]["data"].get("pid"))
    assert pid in worker.pool_pids()
    os.kill(pid, signal.SIGKILL)

    final = await client.wait_terminal(task_id, timeout=30)
    assert final["status"] == "COMPLETED" and final["result"] == {"counted": 20}
    await asyncio.sleep(0.5)  # late updates, if any, would have arrived by now
    ran_again_once(stack, events, runs, task_id)


async def test_killed_worker_task_is_delivered_again_and_stalled_meanwhile(
    stack: Stack, worker: CeleryWorker, gw: TestServer, sockets: Connect, tmp_path: Path
) -> None:
    client, runs, task_id = await twenty_steps(gw, sockets, tmp_path)
    events = client.events[task_id]
    await client.wait_for(lambda: any(e["progress"]["percent"] > 0 for e in events), 10)
    await asyncio.to_thread(stack.stop_worker, signal.SIGKILL)
    killed_at = time.monotonic()

    # Heartbeat: three missed beats (1.5 s) and the owner is told.
    await client.wait_for(lambda: any(e.get("stalled") for e in events), 6)
    assert events[-1]["status"] == "RUNNING" and events[-1]["stalled"] is True
    await asyncio.to_thread(stack.start_worker)
    final = await client.wait_terminal(task_id, timeout=30)
    # Redelivered only once the visibility timeout (10 s) passed, never before.
    assert time.monotonic() - killed_at > 8
    assert final["status"] == "COMPLETED" and final["stalled"] is False
    await asyncio.sleep(0.5)  # late updates, if any, would have arrived by now
    ran_again_once(stack, events, runs, task_id)


async def test_a_retry_survives_a_worker_killed_during_its_backoff(
    stack: Stack, worker: CeleryWorker, gw: TestServer, sockets: Connect, tmp_path: Path
) -> None:
    """ctx.retry(countdown=3) on the first attempt; the worker holding the retry's message is
    killed during the wait. The message comes back (visibility timeout) and the second attempt
    runs once, on the new worker: COMPLETED with attempts 2."""
    name, runs = user(), tmp_path / "runs"
    client = await sockets(base(gw), name)
    body = {"task": "faults.retry_later", "input": {"countdown": 3, "path": str(runs)}}
    task_id = (await submit(base(gw), name, body))[1]["task_id"]
    events = client.events[task_id]
    await client.wait_for(lambda: any(e["status"] == "RETRYING" for e in events), 15)
    await asyncio.to_thread(stack.stop_worker, signal.SIGKILL)
    await asyncio.to_thread(stack.start_worker)
    final = await client.wait_terminal(task_id, timeout=40)
    assert final["status"] == "COMPLETED" and final["result"] == {"attempts": 2}, final
    lines = runs.read_text().splitlines()
    assert [line.split()[3] for line in lines] == ["1", "2"], lines
    await asyncio.sleep(0.5)
    check_stream(events)
    assert len(terminal_events(events)) == 1


async def test_a_delay_longer_than_the_visibility_timeout_runs_exactly_once(
    stack: Stack, worker: CeleryWorker, gw: TestServer, sockets: Connect, tmp_path: Path
) -> None:
    """countdown 13 s with a 10 s visibility timeout: with Celery's own countdown the worker
    would hold the message un-acked past the timeout and Redis would hand it out again
    (celery#2599). Held in Redis until due instead, the task runs once."""
    name, runs = user(), tmp_path / "runs"
    assert stack.settings.visibility_timeout == 10
    client = await sockets(base(gw), name)
    body = {
        "task": "faults.steps",
        "input": {"steps": 2, "delay": 0.05, "path": str(runs)},
        "countdown": 13,
    }
    snap = (await submit(base(gw), name, body))[1]
    final = await client.wait_terminal(snap["task_id"], timeout=40)
    assert final["status"] == "COMPLETED"
    assert final["started_at"] >= snap["eta"] - 0.05
    await asyncio.sleep(stack.settings.visibility_timeout + 1)  # time for a second delivery
    assert len(runs.read_text().splitlines()) == 1
    check_stream(client.events[snap["task_id"]])


# ---- 3. Poison tasks stop ---------------------------------------------------------------------


async def test_task_that_kills_its_worker_is_tried_three_times_then_fails(
    stack: Stack, worker: CeleryWorker, gw: TestServer, sockets: Connect, tmp_path: Path
) -> None:
    name, runs = user(), tmp_path / "runs"
    client = await sockets(base(gw), name)
    poison = (await submit(base(gw), name, {"task": "faults.die", "input": {"path": str(runs)}}))[
        1
    ]["task_id"]
    others = [
        (await submit(base(gw), name, {"task": "demo.count", "input": {"steps": 3, "delay": 0.1}}))[
            1
        ]["task_id"]
        for _ in range(4)
    ]
    final = await client.wait_terminal(poison, timeout=45)
    assert final["status"] == "FAILED"
    assert final["error"]["type"] == "WorkerLost" and "3 runs" in final["error"]["message"]
    assert len(runs.read_text().splitlines()) == 3
    for task_id in others:
        assert (await client.wait_terminal(task_id, timeout=20))["status"] == "COMPLETED"
    check_stream(client.events[poison])


# ---- 4. Time limits end tasks -----------------------------------------------------------------


async def test_soft_and_hard_time_limits_end_tasks_timed_out(
    stack: Stack, worker: CeleryWorker, gw: TestServer, sockets: Connect
) -> None:
    name = user()
    client = await sockets(base(gw), name)
    soft = (await submit(base(gw), name, {"task": "demo.sleep", "input": {"seconds": 30}}))[1]
    hard = (await submit(base(gw), name, {"task": "faults.stubborn", "input": {"seconds": 30}}))[1]
    s = await client.wait_terminal(soft["task_id"], timeout=20)
    h = await client.wait_terminal(hard["task_id"], timeout=20)
    assert s["status"] == "TIMED_OUT" and "soft time limit (6s)" in s["error"]["message"]
    assert h["status"] == "TIMED_OUT" and "hard time limit (8" in h["error"]["message"]
    await asyncio.sleep(1.0)
    for snap in (s, h):
        check_stream(client.events[snap["task_id"]])
        assert stack.record(snap["task_id"])["status"] == '"TIMED_OUT"'


async def test_a_task_types_own_time_limit_travels_in_its_message_and_holds(
    stack: Stack, worker: CeleryWorker, gw: TestServer, sockets: Connect
) -> None:
    """faults.quick_limit declares soft_time_limit=1 (the workers' own is 6 s): the stock
    worker stops it by the limit its message carried, well before the workers' default."""
    name = user()
    client = await sockets(base(gw), name)
    body = {"task": "faults.quick_limit", "input": {"seconds": 30}}
    snap = (await submit(base(gw), name, body))[1]
    final = await client.wait_terminal(snap["task_id"], timeout=20)
    assert final["status"] == "TIMED_OUT", final
    assert "soft time limit (1s)" in final["error"]["message"]
    # Stopped by its own limit: the run lasted less than the workers' soft limit (6 s).
    assert final["finished_at"] - final["started_at"] < 6.0, final


async def test_a_task_types_own_hard_limit_alone_holds_below_the_workers_soft_limit(
    stack: Stack, worker: CeleryWorker, gw: TestServer, sockets: Connect
) -> None:
    """faults.hard_limit_only declares time_limit=2 and no soft limit; the workers' soft limit
    is 6 s. Billiard starts a hard timer only once the soft one fired, so with the workers' soft
    limit the task would run 6 s and end "soft time limit (6s)": its own 2 s must stop it."""
    name = user()
    client = await sockets(base(gw), name)
    body = {"task": "faults.hard_limit_only", "input": {"seconds": 30}}
    snap = (await submit(base(gw), name, body))[1]
    final = await client.wait_terminal(snap["task_id"], timeout=20)
    assert final["status"] == "TIMED_OUT", final
    assert final["error"]["type"] == "TimeLimitExceeded", final
    assert "time limit (2s) exceeded" in final["error"]["message"], final
    assert final["finished_at"] - final["started_at"] < 6.0, final


# ---- 5. Heartbeat -----------------------------------------------------------------------------


async def test_heartbeat_refreshes_and_a_frozen_worker_shows_stalled_until_it_moves(
    stack: Stack, worker: CeleryWorker, gw: TestServer, sockets: Connect
) -> None:
    name = user()
    client = await sockets(base(gw), name)
    task_id = (await submit(base(gw), name, {"task": "demo.sleep", "input": {"seconds": 2.5}}))[1][
        "task_id"
    ]
    events = client.events[task_id]
    await client.wait_for(lambda: any(e["status"] == "RUNNING" for e in events), 10)
    await until(lambda: "_hb" in stack.record(task_id), 5)
    first = float(stack.record(task_id)["_hb"])
    await asyncio.sleep(1.2)
    assert float(stack.record(task_id)["_hb"]) > first  # refreshed every 0.5 s

    assert worker.proc is not None
    os.killpg(worker.proc.pid, signal.SIGSTOP)
    try:
        await client.wait_for(lambda: any(e.get("stalled") for e in events), 6)
        stalled_at = max(i for i, e in enumerate(events) if e.get("stalled"))
    finally:
        os.killpg(worker.proc.pid, signal.SIGCONT)
    # It moves again (a heartbeat, progress, or its end): stalled is false from then on.
    await client.wait_for(lambda: any(e["stalled"] is False for e in events[stalled_at:]), 10)
    await client.wait_terminal(task_id, timeout=20)
    check_stream(events)
    assert events[-1]["stalled"] is False


# ---- 6. Relay retry ---------------------------------------------------------------------------


async def test_relay_survives_killed_connection_restart_and_malformed_messages(
    stack: Stack, worker: CeleryWorker, gw: TestServer, sockets: Connect
) -> None:
    relay = gw.app[RELAY]
    name = user()
    client = await sockets(base(gw), name)
    body = {"task": "faults.steps", "input": {"steps": 30, "delay": 0.1}}
    task_id = (await submit(base(gw), name, body))[1]["task_id"]
    events = client.events[task_id]
    await client.wait_for(lambda: any(e["progress"]["percent"] > 0 for e in events), 10)

    # Malformed messages on the channel are skipped; the relay goes on.
    channel = stack.settings.keys.progress_channel
    for junk in (b"not json", b'{"v": 1}', b'{"v": 99, "owner": "x", "snapshot": {}}'):
        stack.sync.publish(channel, junk)
    await until(lambda: relay.skipped >= 3, 5)

    # Its connection killed: it reconnects and re-sends the records.
    stack.sync.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    await until(lambda: relay.reconnects >= 1 and relay.resyncs >= 1, 10)

    # redis-server restarted under it (the worker goes on; the record is the truth).
    await asyncio.to_thread(stack.redis.stop)
    await asyncio.sleep(1.0)
    stack.redis = await asyncio.to_thread(
        RedisServer(stack.redis.data_dir, port=stack.redis.port).start
    )
    await until(lambda: relay.reconnects >= 2 and relay.resyncs >= 2, 20)
    final = await client.wait_terminal(task_id, timeout=40)
    assert final["status"] == "COMPLETED"
    check_stream(events)
    _, polled = await get_task(base(gw), name, task_id)
    assert polled["seq"] == final["seq"] and polled["status"] == "COMPLETED"
    # The worker lived through both (see worker.celery_app._survive_broker_restart) and the run
    # cut off by the lost connection was not repeated alongside itself.
    assert worker.proc is not None and worker.proc.poll() is None
    again = await submit_retrying(base(gw), name, {"task": "demo.count", "input": {"steps": 2}})
    assert (await client.wait_terminal(again["task_id"], timeout=20))["status"] == "COMPLETED"
    assert stack.record(task_id)["_attempt"] == "1"


# ---- 7. Client resume -------------------------------------------------------------------------

CLIENT_SCRIPT = r"""
import asyncio, json, sys
import socketio

async def main(url, token, out):
    sio = socketio.AsyncClient(reconnection=False)
    f = open(out, "a", buffering=1)

    @sio.on("task")
    async def on_task(data):
        f.write(json.dumps(data) + "\n")

    await sio.connect(url, auth={"token": token}, transports=["websocket"], wait_timeout=10)
    await sio.wait()

asyncio.run(main(*sys.argv[1:]))
"""


async def test_client_killed_mid_task_catches_up_on_reconnect(
    stack: Stack, worker: CeleryWorker, gw: TestServer, sockets: Connect, tmp_path: Path
) -> None:
    name, out = user(), tmp_path / "client.jsonl"
    errors = open(tmp_path / "client.err", "wb")  # noqa: SIM115, ASYNC230
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT_SCRIPT, base(gw), make_token(name), str(out), stderr=errors
    )
    errors.close()
    try:
        await asyncio.sleep(1.0)  # connected (a snapshot-less connect sends nothing)
        body = {"task": "faults.steps", "input": {"steps": 20, "delay": 0.1}}
        status, snap = await submit(base(gw), name, body)
        assert status == 202, snap
        task_id = snap["task_id"]

        def lines() -> list[dict[str, Any]]:
            return [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []

        await until(lambda: len(lines()) >= 5, 15)
    except TimeoutError:
        raise AssertionError((tmp_path / "client.err").read_text()[-2000:]) from None
    finally:
        proc.kill()
        await proc.wait()
    before = lines()
    assert before and before[-1]["status"] == "RUNNING"
    last_seq = max(e["seq"] for e in before)

    # The task ends while the client is away.
    await until(lambda: stack.record(task_id).get("status") == '"COMPLETED"', 20)
    client = await sockets(base(gw), name)
    await client.wait_terminal(task_id, timeout=10)  # the connect-time snapshot
    ack = await client.call("watch", {"tasks": {task_id: last_seq}})
    assert ack == {"ok": True, "sent": 1}
    stream = before + client.events[task_id]
    applied = check_stream(stream)
    assert applied[-1]["status"] == "COMPLETED" and applied[-1]["result"] == {"counted": 20}
    # Watching from the final seq sends nothing more.
    assert await client.call("watch", {"tasks": {task_id: applied[-1]["seq"]}}) == {
        "ok": True,
        "sent": 0,
    }


# ---- 8. Gateway restart -----------------------------------------------------------------------


async def test_gateway_killed_and_restarted_clients_converge(
    stack: Stack, worker: CeleryWorker, tmp_path: Path
) -> None:
    gateway = await asyncio.to_thread(GatewayProcess(stack.env, tmp_path).start)
    name = user()
    client = reconnecting(await SocketClient(gateway.url, make_token(name)).connect())
    try:
        body = {"task": "faults.steps", "input": {"steps": 25, "delay": 0.1}}
        ids = []
        for _ in range(3):
            ack = await client.call("submit", body)
            ids.append(ack["task_id"])
        await client.wait_for(
            lambda: all(any(e["progress"]["percent"] > 0 for e in client.events[t]) for t in ids),
            10,
        )
        await asyncio.to_thread(gateway.stop, signal.SIGKILL)
        await asyncio.sleep(0.5)
        status = None
        with contextlib.suppress(aiohttp.ClientConnectionError):
            status, _ = await submit(gateway.url, name, body)
        assert status is None  # nobody listening: nothing was accepted
        gateway = await asyncio.to_thread(
            GatewayProcess(stack.env, tmp_path, port=gateway.port).start
        )
        for task_id in ids:
            final = await client.wait_terminal(task_id, timeout=30)
            assert final["status"] == "COMPLETED"
            check_stream(client.events[task_id])
            status, polled = await get_task(gateway.url, name, task_id)
            assert status == 200 and polled == final
        assert client.sio.connected
    finally:
        await client.close()
        await asyncio.to_thread(gateway.stop)


# ---- 9. Several gateways ----------------------------------------------------------------------


async def test_two_gateways_each_client_sees_every_update_once(
    stack: Stack, worker: CeleryWorker, tmp_path: Path
) -> None:
    one, two = await asyncio.gather(
        asyncio.to_thread(GatewayProcess(stack.env, tmp_path).start),
        asyncio.to_thread(GatewayProcess(stack.env, tmp_path).start),
    )
    name, other = user(), user()
    clients: list[SocketClient] = []
    try:
        for url, who in ((one.url, name), (two.url, name), (two.url, other)):
            clients.append(await SocketClient(url, make_token(who)).connect())
        await asyncio.sleep(0.5)  # connect-time snapshots (none) are done
        body = {"task": "faults.steps", "input": {"steps": 10, "delay": 0.05}}
        status, snap = await submit(one.url, name, body)
        assert status == 202
        task_id = snap["task_id"]
        for client in clients[:2]:
            final = await client.wait_terminal(task_id, timeout=20)
            assert final["status"] == "COMPLETED"
        await asyncio.sleep(0.5)
        for client in clients[:2]:
            seqs = [e["seq"] for e in client.events[task_id]]
            assert sorted(seqs) == list(range(1, final["seq"] + 1)), seqs
        assert clients[2].all_events == []
    finally:
        for client in clients:
            await client.close()
        await asyncio.gather(asyncio.to_thread(one.stop), asyncio.to_thread(two.stop))


# ---- 10. Cancel sticks ------------------------------------------------------------------------


async def test_cancelled_queued_task_never_runs_even_after_worker_restarts(
    stack: Stack, gw: TestServer, tmp_path: Path
) -> None:
    await asyncio.to_thread(stack.stop_worker)
    name, runs = user(), tmp_path / "runs"
    body = {"task": "faults.steps", "input": {"steps": 2, "delay": 0, "path": str(runs)}}
    task_id = (await submit(base(gw), name, body))[1]["task_id"]
    async with (
        aiohttp.ClientSession() as session,
        session.delete(f"{base(gw)}/api/tasks/{task_id}", headers=auth(name)) as resp,
    ):
        assert resp.status == 202
    cancelled = stack.record(task_id)
    assert cancelled["status"] == '"CANCELLED"'

    # A worker starts and takes the message: the record says cancelled, so it does not run it.
    queues = [k for k in stack.sync.scan_iter(match=f"{stack.prefix}broker:fast*")]
    assert queues
    first = await asyncio.to_thread(stack.start_worker)
    await until(lambda: sum(stack.sync.llen(q) for q in queues) == 0, 15)
    await until(lambda: b"not running it" in first.log.read_bytes(), 15)
    # Every worker dies and another starts (revokes kept in worker memory would be gone now).
    await asyncio.sleep(0.3)
    await asyncio.to_thread(stack.stop_worker, signal.SIGKILL)
    await asyncio.to_thread(stack.start_worker)
    await asyncio.sleep(1.5)
    assert not runs.exists()
    after = stack.record(task_id)
    # Never started: no started_at stored (a field never stored reads as null).
    assert after["seq"] == cancelled["seq"] and after.get("started_at", "null") == "null"
    assert "_attempt" not in after


# ---- 11. Lifetimes are explicit ---------------------------------------------------------------


async def test_records_and_results_expire_after_retention_then_404(
    stack: Stack, aiohttp_server: Callable[..., Awaitable[TestServer]], sockets: Connect
) -> None:
    prefix = f"tgr-{uuid.uuid4().hex[:8]}:"
    env = base_env(stack.redis.url, prefix, **FAULT_ENV, TASKGATE_RETENTION_S="2")
    short = await asyncio.to_thread(CeleryWorker(env, stack.tmp, queues="fast").start)
    try:
        gateway = await aiohttp_server(create_app(Settings.from_env(env)))
        name = user()
        client = await sockets(base(gateway), name)
        done = (await submit(base(gateway), name, {"task": "demo.count", "input": {"steps": 1}}))[
            1
        ]["task_id"]
        # Nobody consumes "heavy" here: this one stays PENDING.
        queued = (await submit(base(gateway), name, {"task": "demo.primes", "input": {}}))[1][
            "task_id"
        ]
        assert (await client.wait_terminal(done, timeout=15))["status"] == "COMPLETED"
        # Celery stores its result just after the record ends.
        pattern = f"{prefix}*celery-task-meta-{done}"
        await until(lambda: any(stack.sync.scan_iter(match=pattern)), 5)
        meta = list(stack.sync.scan_iter(match=pattern))
        for key in [f"{prefix}task:{done}", f"{prefix}task:{queued}", *meta]:
            assert 0 < stack.sync.ttl(key) <= 2, key
        assert (await get_task(base(gateway), name, queued))[1]["status"] == "PENDING"
        await asyncio.sleep(3.0)
        for task_id in (done, queued):
            status, body = await get_task(base(gateway), name, task_id)
            assert status == 404 and body["error"]["code"] == "not_found"
        assert not any(stack.sync.exists(k) for k in meta)
    finally:
        await asyncio.to_thread(short.stop)


# ---- 2b. A message lost in flight comes back --------------------------------------------------


async def test_message_lost_between_brpop_and_unacked_is_published_again(
    stack: Stack, gw: TestServer, sockets: Connect
) -> None:
    """kombu takes a message with BRPOP, then marks it un-acked: a worker killed in between
    loses it, and no visibility timeout brings it back. Freeze a worker whose BRPOP is waiting,
    submit (Redis hands the message to the frozen worker), kill it: the outbox publishes the
    message again and the task completes."""
    name = user()
    client = await sockets(base(gw), name)
    await asyncio.to_thread(stack.stop_worker)
    frozen = await asyncio.to_thread(stack.start_worker, concurrency=1)
    await asyncio.sleep(0.5)
    assert frozen.proc is not None
    broker = f"{stack.prefix}broker:"

    def in_broker(task_id: str) -> bool:
        lists = stack.sync.scan_iter(match=f"{broker}fast*")
        queued = any(task_id.encode() in m for k in lists for m in stack.sync.lrange(k, 0, -1))
        held = any(task_id.encode() in m for m in stack.sync.hvals(f"{broker}unacked"))
        return queued or held

    for _ in range(5):
        os.killpg(frozen.proc.pid, signal.SIGSTOP)
        body = {"task": "demo.count", "input": {"steps": 2, "delay": 0}}
        task_id = (await submit(base(gw), name, body))[1]["task_id"]
        await asyncio.sleep(0.3)
        if not in_broker(task_id):
            break  # the frozen worker's BRPOP took it
        os.killpg(frozen.proc.pid, signal.SIGCONT)  # its BRPOP had just timed out: again
        await client.wait_terminal(task_id, timeout=20)
    else:
        raise AssertionError("the frozen worker never took a message")
    await asyncio.to_thread(stack.stop_worker, signal.SIGKILL)
    assert not in_broker(task_id) and stack.record(task_id)["status"] == '"PENDING"'

    await asyncio.to_thread(stack.start_worker)
    final = await client.wait_terminal(task_id, timeout=30)
    assert final["status"] == "COMPLETED"
    check_stream(client.events[task_id])


async def test_started_task_whose_put_back_message_is_lost_runs_again(
    stack: Stack, gw: TestServer, sockets: Connect
) -> None:
    """The state the soak left once, read back from Redis's append-only file: a task RUNNING
    when its worker was SIGKILLed; kombu's visibility timeout put its message back in the
    queue; a worker took it with BRPOP and was killed before marking it un-acked. The message
    was then nowhere and the task stayed RUNNING for good.

    Here: a real worker runs the task and is SIGKILLed (the message is un-acked); then the
    un-acked entry and the message are removed, as that second worker's BRPOP and death did.
    The outbox pushes the copy back once the task shows stalled, and a new worker finishes it.
    """
    name = user()
    client = await sockets(base(gw), name)
    stack.ensure_worker()
    body = {"task": "faults.steps", "input": {"steps": 40, "delay": 0.1}}
    task_id = (await submit(base(gw), name, body))[1]["task_id"]
    await client.wait_for(lambda: any(e["status"] == "RUNNING" for e in client.events[task_id]))
    await asyncio.to_thread(stack.stop_worker, signal.SIGKILL)
    unacked = f"{stack.prefix}broker:unacked"
    assert stack.sync.hexists(unacked, task_id)
    stack.sync.hdel(unacked, task_id)
    stack.sync.zrem(f"{stack.prefix}broker:unacked_index", task_id)
    lists = list(stack.sync.scan_iter(match=f"{stack.prefix}broker:fast*"))
    assert not any(task_id.encode() in m for k in lists for m in stack.sync.lrange(k, 0, -1))
    assert stack.record(task_id)["status"] == '"RUNNING"'

    await asyncio.to_thread(stack.start_worker)
    final = await client.wait_terminal(task_id, timeout=40)
    assert final["status"] == "COMPLETED"
    assert stack.record(task_id)["_attempt"] == "2"
    check_stream(client.events[task_id])
