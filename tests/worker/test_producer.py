"""The producer API on every task (issue 14, item 2): ``.delay()`` / ``.apply_async()`` check the
input, write the record and publish; ``.s()`` / ``.si()`` work in Celery's own canvas; a task
starts children owned by its user and linked to it; handles wait for results.

Real parts only: a redis-server, a stock ``celery -A worker worker`` of this module (its own key
prefix, with ``tests.worker.producer_tasks`` loaded), a real gateway and Socket.IO clients
where the owner's live view matters, and a plain Python process as the producer.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from gateway.appkeys import TASK_EVENTS
from shared import producer
from shared.delayed_layout import pack, unpack
from shared.errors import BrokerUnavailable, Conflict, InvalidInput, RateLimited, ResultTimeout
from shared.handle import TaskFailed, TaskHandle, TaskWasCancelled
from shared.records import SyncRecords
from shared.settings import Settings
from shared.status import TaskStatus
from tests.support import (
    ROOT,
    CatchUps,
    CeleryWorker,
    ServerFactory,
    SocketClient,
    applied_updates,
    isolated_env,
    make_token,
    serve_gateway,
    started,
)
from tests.worker.producer_tasks import parent
from worker.demo import add, count, fail

MODULES = "worker.demo,tests.worker.producer_tasks"


def user() -> str:
    """A user of this test alone."""
    return f"p-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def penv(env: dict[str, str]) -> dict[str, str]:
    """This module's deployment: a key prefix of its own (only its worker takes its messages),
    the test tasks loaded, a service user of its own."""
    return isolated_env(
        env,
        TASKGATE_TASK_MODULES=MODULES,
        TASKGATE_SUBMIT_RATE="0",
        TASKGATE_SERVICE_USER=f"svc-{uuid.uuid4().hex[:6]}",
    )


@pytest.fixture(scope="module")
def pworker(penv: dict[str, str], log_dir: Path) -> Iterator[CeleryWorker]:
    with started(CeleryWorker(penv, log_dir)) as worker:
        yield worker


@pytest.fixture
def psettings(penv: dict[str, str]) -> Iterator[Settings]:
    """The process's producer sends to this module's deployment during the test."""
    settings = Settings.from_env(penv)
    producer.configure(settings)
    yield settings
    producer.configure(None)


@pytest.fixture
def idle(penv: dict[str, str]) -> Iterator[Settings]:
    """A deployment no worker and no gateway serves: what a send leaves stays where it is."""
    prefix = f"tg-idle-{uuid.uuid4().hex[:8]}:"
    settings = Settings.from_env({**penv, "TASKGATE_KEY_PREFIX": prefix})
    producer.configure(settings)
    yield settings
    producer.configure(None)


def store(settings: Settings) -> SyncRecords:
    client = redis.Redis.from_url(str(settings.redis_url))
    return SyncRecords(client, settings.keys, settings.retention_s)


def footprint(settings: Settings) -> dict[str, int]:
    """Records, broker messages and held (delayed) messages under ``settings``' prefix."""
    client = redis.Redis.from_url(str(settings.redis_url))
    prefix = settings.keys.prefix
    records = sum(1 for _ in client.scan_iter(match=f"{prefix}task:*", count=1000))
    messages = sum(
        int(client.llen(key))
        for key in client.scan_iter(match=f"{prefix}broker:*", count=1000)
        if client.type(key) == b"list"
    )
    keys = settings.keys
    held = int(client.zcard(keys.delayed)) + int(client.hlen(keys.delayed_messages))
    client.close()
    return {"records": records, "messages": messages, "held": held}


def owned(settings: Settings, owner: str) -> set[str]:
    client = redis.Redis.from_url(str(settings.redis_url))
    ids = {i.decode() for i in client.zrange(settings.keys.user_tasks(owner), 0, -1)}
    client.close()
    return ids


# ---- checks before anything is written -----------------------------------------------------


def test_bad_calls_raise_the_gateways_errors_naming_the_field_and_write_nothing(
    idle: Settings,
) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=30)
    bad: list[tuple[str, Any]] = [
        ("input.steps", lambda: count.delay(steps=0)),
        ("input.steps", lambda: count.delay(steps="3")),
        ("input.nope", lambda: count.delay(nope=1)),
        ("kwargs", lambda: count.apply_async(kwargs=[1])),
        ("args", lambda: count.delay(3)),
        ("queue", lambda: count.apply_async(kwargs={}, queue="reports")),
        ("priority", lambda: count.apply_async(kwargs={}, priority=10)),
        ("priority", lambda: count.apply_async(kwargs={}, priority=True)),
        ("countdown", lambda: count.apply_async(kwargs={}, countdown=-1)),
        ("countdown", lambda: count.apply_async(kwargs={}, countdown=idle.retention_s)),
        ("eta", lambda: count.apply_async(kwargs={}, eta=12345)),
        ("eta", lambda: count.apply_async(kwargs={}, eta="2030-01-01T00:00:00Z")),  # too far
        ("eta", lambda: count.apply_async(kwargs={}, countdown=5, eta=soon)),
        ("expires", lambda: count.apply_async(kwargs={}, countdown=60, expires=soon)),
        ("expires", lambda: count.apply_async(kwargs={}, expires=0)),
        ("headers.id", lambda: count.apply_async(kwargs={}, headers={"id": "x"})),
        ("headers.taskgate_record", lambda: count.apply_async(headers={"taskgate_record": 0})),
        ("headers", lambda: count.apply_async(kwargs={}, headers={"when": object()})),
        ("user", lambda: count.apply_async(kwargs={}, user="")),
        ("user", lambda: count.apply_async(user="a", headers={"taskgate_user": "b"})),
        ("task_id", lambda: count.apply_async(kwargs={}, task_id="not-a-uuid")),
        ("link", lambda: count.apply_async(kwargs={}, link=add.s(value=1))),
        ("input.value", lambda: add.s(value="one")),
        ("countdown", lambda: add.signature(kwargs={}, countdown=5)),
    ]
    for field, call in bad:
        with pytest.raises(InvalidInput) as caught:
            call()
        assert caught.value.details["field"] == field, (field, caught.value)
        assert caught.value.code == "invalid_input"
    assert footprint(idle) == {"records": 0, "messages": 0, "held": 0}


def test_the_owners_quota_holds_as_on_the_gateway(penv: dict[str, str]) -> None:
    settings = Settings.from_env(
        {**penv, "TASKGATE_KEY_PREFIX": f"tg-q-{uuid.uuid4().hex[:8]}:", "TASKGATE_MAX_ACTIVE": "1"}
    )
    producer.configure(settings)
    try:
        count.apply_async(kwargs={}, user="quota")
        with pytest.raises(RateLimited) as caught:
            count.apply_async(kwargs={}, user="quota")
        assert caught.value.details == {"active": 1}
        # Another owner has a quota of their own.
        count.apply_async(kwargs={}, user="other")
        assert footprint(settings) == {"records": 2, "messages": 2, "held": 0}
    finally:
        producer.configure(None)


def test_a_task_id_given_twice_is_a_conflict_and_the_first_task_stays(idle: Settings) -> None:
    task_id = str(uuid.uuid4())
    assert count.apply_async(kwargs={}, task_id=task_id).id == task_id
    with pytest.raises(Conflict) as caught:
        count.apply_async(kwargs={"steps": 2}, task_id=task_id)
    assert caught.value.details == {"field": "task_id"}
    assert footprint(idle) == {"records": 1, "messages": 1, "held": 0}


@contextlib.contextmanager
def silent_broker() -> Iterator[str]:
    """A loopback port that accepts connections and never answers (a frozen broker)."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


@pytest.mark.parametrize("broker", ["closed", "frozen"])
def test_a_broker_that_refuses_leaves_nothing_accepted(penv: dict[str, str], broker: str) -> None:
    """Closed: nothing listens on the port. Frozen: it accepts and never answers; the send
    fails (the producer's Redis socket timeouts) instead of hanging with the record PENDING."""
    with contextlib.ExitStack() as stack:
        url = "redis://127.0.0.1:1/0"
        if broker == "frozen":
            url = stack.enter_context(silent_broker())
        _refused_send_leaves_nothing(penv, url)


def _refused_send_leaves_nothing(penv: dict[str, str], broker_url: str) -> None:
    settings = Settings.from_env(
        {
            **penv,
            "TASKGATE_KEY_PREFIX": f"tg-nb-{uuid.uuid4().hex[:8]}:",
            "CELERY_BROKER_URL": broker_url,
        }
    )
    producer.configure(settings)
    try:
        with pytest.raises(BrokerUnavailable):
            count.apply_async(kwargs={}, user="nobroker")
        assert footprint(settings)["records"] == 0
        assert owned(settings, "nobroker") == set()
    finally:
        producer.configure(None)


# ---- what a send writes and publishes ------------------------------------------------------


def test_apply_async_writes_the_record_then_the_message_the_gateway_would(idle: Settings) -> None:
    owner = user()
    handle = count.apply_async(
        kwargs={"steps": 2},
        queue="heavy",
        priority=7,
        expires=60,
        headers={"x-request": "r1"},
        user=owner,
    )
    snap = handle.status()
    assert snap["status"] == TaskStatus.PENDING and snap["seq"] == 1
    assert (snap["task"], snap["queue"], snap["parent_id"], snap["eta"]) == (
        "demo.count", "heavy", None, None,
    )  # fmt: skip
    assert owned(idle, owner) == {handle.id}
    client = redis.Redis.from_url(str(idle.redis_url))
    # taskgate's 7 (9 most urgent) is kombu-Redis's list 2, as the gateway maps it.
    raw = client.lpop(idle.keys.broker_queues("heavy")[2])
    client.close()
    assert raw is not None
    envelope = json.loads(raw)
    headers = envelope["headers"]
    assert headers["id"] == handle.id and headers["task"] == "demo.count"
    assert headers["taskgate_record"] is True and headers["x-request"] == "r1"
    assert headers["expires"] is not None and headers["timelimit"] == [None, None]
    args, kwargs, _ = json.loads(base64.b64decode(envelope["body"]))
    assert args == [] and kwargs == {"steps": 2, "delay": 0.1}  # defaults filled in, checked


def test_a_delayed_task_is_held_in_redis_when_no_gateway_runs(idle: Settings) -> None:
    before = time.time()
    # An option given as None is not given, as with Celery's apply_async.
    handle = count.apply_async(kwargs={}, countdown=30, queue=None, priority=None)
    snap = handle.status()
    assert snap["status"] == TaskStatus.PENDING and snap["eta"] >= before + 30
    assert owned(idle, idle.service_user) == {handle.id}
    # Not on the broker: in the hold a gateway's mover publishes from when it is due.
    assert footprint(idle) == {"records": 1, "messages": 0, "held": 2}
    client = redis.Redis.from_url(str(idle.redis_url))
    raw = client.hget(idle.keys.delayed_messages, handle.id) or b"{}"
    client.close()
    held = orjson.loads(raw)
    assert (held["task_id"], held["task"], held["queue"], held["priority"]) == (
        handle.id, "demo.count", "fast", 0,
    )  # fmt: skip
    assert held["headers"]["taskgate_record"] is True
    # The layout the gateways' mover reads (shared.delayed_layout), written by it alone.
    message = unpack(raw)
    assert pack(message) == raw
    assert orjson.loads(message.body)[:2] == [[], {"steps": 10, "delay": 0.1}]


def test_get_raises_for_a_cancelled_task_and_times_out_for_one_that_does_not_end(
    idle: Settings,
) -> None:
    waiting = count.delay()
    with pytest.raises(ResultTimeout):
        waiting.get(timeout=0.2)
    assert waiting.status()["status"] == TaskStatus.PENDING  # the wait changed nothing
    store(idle).transition(
        waiting.id, "cancel", status=TaskStatus.CANCELLED, fields={"finished_at": time.time()}
    )
    with pytest.raises(TaskWasCancelled) as caught:
        waiting.get(timeout=5)
    assert caught.value.status == TaskStatus.CANCELLED


def test_the_task_object_is_still_the_function() -> None:
    class Ctx:
        task_id = "t"
        parent_result: Any = [{"total": 1.0}, {"total": 2.0}]

        def progress(self, percent: float, message: str | None = None, **data: Any) -> None:
            self.last = (percent, message)

    ctx = Ctx()
    assert add(ctx, value=3.0) == {"total": 6.0}  # type: ignore[arg-type]
    assert ctx.last == (100.0, "total 6")
    assert add.name == "demo.add" and add.__doc__ and add.__wrapped__ is not None


# ---- with a worker ------------------------------------------------------------------------


def test_delay_runs_and_get_returns_the_result_or_raises_for_a_failure(
    pworker: CeleryWorker, psettings: Settings
) -> None:
    assert count.delay(steps=2, delay=0).get(timeout=20) == {"counted": 2}
    failing = fail.apply_async(kwargs={"message": "on purpose"}, user="f")
    with pytest.raises(TaskFailed) as caught:
        failing.get(timeout=20)
    assert caught.value.error == {"type": "DemoFailure", "message": "on purpose"}
    assert caught.value.snapshot["status"] == TaskStatus.FAILED


CANVAS = """
import json, sys
from celery import chain, chord, group
from shared.producer import producer
from worker.demo import add, count

owner = sys.argv[1]
handle = producer().handle
last = chain(add.signature(kwargs={"value": 1}, user=owner), add.s(value=2)).apply_async()
parts = group(count.si(steps=1, delay=0), add.si(value=5)).apply_async()
body = chord([add.si(value=1), add.si(value=2)], add.s(value=10)).apply_async()
group_ids = [r.id for r in parts.results]
print(json.dumps({
    "chain": [last.parent.id, last.id], "group": group_ids, "chord": body.id,
    "results": [handle(last.id).get(timeout=20), [handle(i).get(timeout=20) for i in group_ids],
                handle(body.id).get(timeout=20)],
}))
"""


def run_script(script: str, env: dict[str, str], *args: str) -> dict[str, Any]:
    """Run ``script`` in a plain Python process of ``env``; what it printed last, as JSON."""
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def test_signatures_work_in_celerys_chain_group_and_chord(
    pworker: CeleryWorker, psettings: Settings, penv: dict[str, str]
) -> None:
    owner = user()
    out = run_script(CANVAS, penv, owner)
    assert out["results"] == [{"total": 3.0}, [{"counted": 1}, {"total": 5.0}], {"total": 13.0}]
    # Each step got its record when a worker took it: the first chain step is the owner's,
    # the others (no owner given) the service user's.
    first, last = out["chain"]
    assert owned(psettings, owner) == {first}
    assert {last, out["chord"], *out["group"]} <= owned(psettings, psettings.service_user)


def test_a_task_starts_children_of_its_owner_linked_to_it(
    pworker: CeleryWorker, psettings: Settings
) -> None:
    owner = user()
    started = parent.apply_async(kwargs={"steps": 2}, user=owner)
    out = started.get(timeout=30)
    assert out["get_refused"] is True and out["is_handle"] is True
    children = [*out["children"], out["chain_first"], out["chain_last"]]
    handle = producer.producer().handle
    results = [handle(tid).get(timeout=20) for tid in children]
    assert results == [
        {"counted": 2}, {"total": 2.0}, {"counted": 2}, {"total": 1.0}, {"total": 1.0},
        {"total": 3.0},
    ]  # fmt: skip
    for tid in children:
        assert handle(tid).status()["parent_id"] == started.id
    assert owned(psettings, owner) == {started.id, *children}
    assert started.status()["parent_id"] is None


# ---- with a gateway and the owner's socket ---------------------------------------------------

PRODUCER = """
import json, sys
from worker.demo import count

owner = sys.argv[1]
by_delay = count.delay(steps=3, delay=0.05)
by_apply = count.apply_async(kwargs={"steps": 2, "delay": 0}, user=owner)
print(json.dumps({
    "delay": by_delay.id, "apply": by_apply.id,
    "results": [by_delay.get(timeout=30), by_apply.get(timeout=30)],
}))
"""


async def test_delay_from_a_plain_python_process_reaches_completed_live_on_the_owners_socket(
    pworker: CeleryWorker, psettings: Settings, penv: dict[str, str], aiohttp_server: ServerFactory
) -> None:
    server = await serve_gateway(aiohttp_server, psettings)
    url = str(server.make_url(""))
    owner = user()
    ledger = server.app[TASK_EVENTS]
    catch_ups = CatchUps(ledger)
    service = await SocketClient(url, make_token(psettings.service_user)).connect()
    theirs = await SocketClient(url, make_token(owner)).connect()
    try:
        # Their connect-time catch-ups done, so no drop of theirs is counted as an announce's.
        await catch_ups.wait(service)
        await catch_ups.wait(theirs)
        dropped = ledger.dropped
        out = await asyncio.to_thread(run_script, PRODUCER, penv, owner)
        assert out["results"] == [{"counted": 3}, {"counted": 2}]
        for client, tid, steps in ((service, out["delay"], 3), (theirs, out["apply"], 2)):
            final = await client.wait_terminal(tid)
            assert final["status"] == "COMPLETED" and final["result"] == {"counted": steps}
            assert applied_updates(client.events[tid])[-1] == final
            seen = {(e["status"], e["seq"]) for e in client.events[tid]}
            assert all(status == "PENDING" for status, seq in seen if seq == 1), seen
            assert "RUNNING" in {status for status, _ in seen}
            steps_seen = {e["progress"]["data"].get("step") for e in client.events[tid]}
            assert set(range(1, steps + 1)) <= steps_seen

        # Each task's PENDING announce (seq 1) reached the gateway: sent to the owner's room,
        # or, as it is published after the message, behind the worker's first update and then
        # not sent (the gateway never sends a room an older seq than it sent, and counts it
        # dropped: gateway/live/ledger.py).
        def announced() -> int:
            pairs = ((service, out["delay"]), (theirs, out["apply"]))
            got = sum(any(e["seq"] == 1 for e in c.events[tid]) for c, tid in pairs)
            return got + ledger.dropped - dropped

        async with asyncio.timeout(20):
            while announced() < 2:  # noqa: ASYNC110 (a count, no event to wait on)
                await asyncio.sleep(0.05)
        # Each owner saw only their own task.
        assert out["apply"] not in service.events and out["delay"] not in theirs.events
    finally:
        await service.close()
        await theirs.close()


async def test_a_producer_delayed_task_is_published_by_a_running_gateway_when_due(
    pworker: CeleryWorker, psettings: Settings, aiohttp_server: ServerFactory
) -> None:
    await serve_gateway(aiohttp_server, psettings)
    eta = datetime.now(UTC) + timedelta(seconds=1)
    handle: TaskHandle = await asyncio.to_thread(
        lambda: count.apply_async(kwargs={"steps": 1, "delay": 0}, eta=eta, user=user())
    )
    result = await asyncio.to_thread(handle.get, 20)
    assert result == {"counted": 1}
    snap = await asyncio.to_thread(handle.status)
    assert snap["started_at"] >= eta.timestamp() and snap["eta"] == eta.timestamp()
    assert footprint(psettings)["held"] == 0
