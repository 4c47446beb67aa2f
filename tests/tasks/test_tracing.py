"""Trace ids end to end (issue 17, items 4 and 5): a W3C ``traceparent`` on a submit is the
snapshot's ``trace_id``, ``ctx.trace_id`` in the task, in the message headers, in the worker's
and the gateway's JSON log lines, and shared by the tasks a task starts; without one the gateway
(or, for a Celery-native message, the worker) starts a trace. With the ``otel`` extra and an
OTLP endpoint, the gateway's submit and publish spans and the worker's run span are exported in
that trace.

Real parts only: a redis-server, a stock ``celery -A worker worker`` of this module (its own key
prefix, JSON logs, ``tests.tasks.tracing_tasks`` loaded), a real gateway (in this process, or a
``taskgate gateway`` process where its log or its exporter is what is checked), python-socketio
clients, and for the spans a small OTLP/HTTP collector on loopback that decodes what the
exporters post (opentelemetry-proto).
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from celery import Celery

from shared.settings import Settings
from shared.tracing import span_id_of
from tests.support import (
    CeleryWorker,
    GatewayProcess,
    ServerFactory,
    SocketClient,
    auth,
    isolated_env,
    make_token,
    serve_gateway,
    started,
)

MODULES = "worker.demo,tests.tasks.tracing_tasks"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"
HEX32 = re.compile(r"^[0-9a-f]{32}$")
TRACED = {"task": "ttest.trace", "input": {}}


def user() -> str:
    return f"tr-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def tenv(env: dict[str, str]) -> dict[str, str]:
    """This module's deployment: its own key prefix, the tracing tasks, JSON logs."""
    return isolated_env(
        env,
        TASKGATE_TASK_MODULES=MODULES,
        TASKGATE_SUBMIT_RATE="0",
        TASKGATE_LOG_FORMAT="json",
    )


@pytest.fixture(scope="module")
def tworker(tenv: dict[str, str], log_dir: Path) -> Iterator[CeleryWorker]:
    with started(CeleryWorker(tenv, log_dir)) as worker:
        yield worker


@pytest.fixture
async def base(
    tenv: dict[str, str], tworker: CeleryWorker, aiohttp_server: ServerFactory
) -> AsyncIterator[str]:
    """A gateway in this process for the module's deployment: its base URL."""
    server = await serve_gateway(aiohttp_server, Settings.from_env(tenv))
    yield str(server.make_url("/"))


async def submit(
    session: aiohttp.ClientSession, url: str, who: str, body: Any, **headers: str
) -> tuple[int, Any]:
    async with session.post(f"{url}api/tasks", json=body, headers={**auth(who), **headers}) as r:
        return r.status, await r.json()


async def result(
    session: aiohttp.ClientSession, url: str, who: str, task_id: str, adopted: bool = False
) -> Any:
    """The task's terminal snapshot; ``adopted``: its record appears only when a worker takes
    its message, so a 404 is asked again meanwhile."""
    async with asyncio.timeout(30):
        while True:
            async with session.get(
                f"{url}api/tasks/{task_id}/result", params={"wait": "20"}, headers=auth(who)
            ) as r:
                if r.status == 404 and adopted:
                    await asyncio.sleep(0.1)
                    continue
                assert r.status == 200, await r.text()
                return await r.json()


def json_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a log file, one per line (other lines, such as Celery's banner, are
    left out)."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


async def wait_for_lines(
    path: Path, task_id: str, word: str = "", timeout: float = 20.0
) -> list[dict[str, Any]]:
    """The JSON log lines of ``path`` about ``task_id``, once one of them has ``word`` in its
    message."""
    async with asyncio.timeout(timeout):
        while True:
            about = [line for line in json_lines(path) if line.get("task_id") == task_id]
            if any(word in line["message"] for line in about):
                return about
            await asyncio.sleep(0.1)


async def test_traceparent_header_is_the_snapshot_the_task_and_the_worker_log(
    base: str, tworker: CeleryWorker
) -> None:
    who = user()
    async with aiohttp.ClientSession() as session:
        status, snap = await submit(session, base, who, TRACED, traceparent=TRACEPARENT)
        assert status == 202, snap
        assert snap["trace_id"] == TRACE
        done = await result(session, base, who, snap["task_id"])
    assert done["status"] == "COMPLETED", done
    assert done["trace_id"] == TRACE
    assert done["result"] == {"trace_id": TRACE}  # ctx.trace_id
    # The worker's log: one JSON object per line; the lines of the task's run name it and its
    # trace (the task's own line, Celery's "succeeded"). Celery's "received", logged by the
    # consumer in the main process before the run, names the task alone.
    lines = await wait_for_lines(tworker.log, snap["task_id"], "succeeded")
    run = [line for line in lines if line["logger"] != "celery.worker.strategy"]
    assert any("succeeded" in line["message"] for line in run), lines
    assert all(line["trace_id"] == TRACE for line in run), lines
    own = [line for line in lines if line["message"] == "tracing task running"]
    assert own and own[0]["logger"] == "tests.tracing" and own[0]["level"] == "INFO"
    assert {"time", "level", "logger", "message"} <= own[0].keys()


async def test_without_traceparent_each_submit_starts_a_trace(base: str) -> None:
    who = user()
    async with aiohttp.ClientSession() as session:
        _, one = await submit(session, base, who, TRACED)
        _, two = await submit(session, base, who, TRACED)
        done = await result(session, base, who, one["task_id"])
    assert HEX32.match(one["trace_id"]) and HEX32.match(two["trace_id"])
    assert one["trace_id"] != two["trace_id"]
    assert done["trace_id"] == one["trace_id"] == done["result"]["trace_id"]


async def test_a_batch_shares_the_request_trace(base: str) -> None:
    who = user()
    async with aiohttp.ClientSession() as session:
        for headers in ({"traceparent": TRACEPARENT}, {}):
            async with session.post(
                f"{base}api/tasks/batch",
                json={"tasks": [TRACED, TRACED, TRACED]},
                headers={**auth(who), **headers},
            ) as r:
                assert r.status == 202
                ids = [t["task_id"] for t in (await r.json())["tasks"]]
            snaps = [await result(session, base, who, tid) for tid in ids]
            traces = {s["trace_id"] for s in snaps}
            assert len(traces) == 1, snaps
            if headers:
                assert traces == {TRACE}
            assert {s["result"]["trace_id"] for s in snaps} == traces
        # A workflow's steps share the request's trace too.
        body = {"chain": [TRACED, TRACED]}
        async with session.post(
            f"{base}api/workflows", json=body, headers={**auth(who), "traceparent": TRACEPARENT}
        ) as r:
            assert r.status == 202
            steps = (await r.json())["task_ids"]
        for tid in steps:
            step = await result(session, base, who, tid)
            assert step["trace_id"] == TRACE
            assert step["result"] == {"trace_id": TRACE}


@pytest.mark.parametrize(
    "value",
    [
        "not a traceparent",
        f"01-{TRACE}-00f067aa0ba902b7-01",  # version 01
        f"00-{'0' * 32}-00f067aa0ba902b7-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE.upper()}-00f067aa0ba902b7-01",  # upper case
        f"00-{TRACE[:-1]}-00f067aa0ba902b7-01",  # 31 hex digits
        f"00-{TRACE}-00f067aa0ba902b7-1",  # one hex digit of flags
    ],
)
async def test_an_invalid_traceparent_is_a_422_naming_it(base: str, value: str) -> None:
    async with aiohttp.ClientSession() as session:
        status, body = await submit(session, base, user(), TRACED, traceparent=value)
        assert status == 422, body
        assert body["error"]["details"]["field"] == "traceparent"
        status, body = await submit(session, base, user(), {**TRACED, "traceparent": value})
        assert status == 422 and body["error"]["details"]["field"] == "traceparent"
        async with session.post(
            f"{base}api/tasks/batch",
            json={"tasks": [TRACED]},
            headers={**auth(user()), "traceparent": value},
        ) as r:
            assert r.status == 422


async def test_socketio_submit_takes_traceparent_in_the_body(base: str) -> None:
    who = user()
    client = await SocketClient(base, make_token(who)).connect()
    try:
        ack = await client.call("submit", {**TRACED, "traceparent": TRACEPARENT})
        assert "task_id" in ack, ack
        done = await client.wait_terminal(ack["task_id"])
        assert done["trace_id"] == TRACE and done["result"] == {"trace_id": TRACE}
        assert all(e["trace_id"] == TRACE for e in client.events[ack["task_id"]])
        bad = await client.call("submit", {**TRACED, "traceparent": "00-xyz"})
        assert bad["error"]["details"]["field"] == "traceparent"
        fresh = await client.call("submit", TRACED)
        started_trace = (await client.wait_terminal(fresh["task_id"]))["trace_id"]
        assert HEX32.match(started_trace) and started_trace != TRACE
    finally:
        await client.close()


async def test_tasks_started_inside_a_task_share_its_trace(base: str) -> None:
    who = user()
    body = {"task": "ttest.parent", "input": {"count": 2}}
    async with aiohttp.ClientSession() as session:
        _, snap = await submit(session, base, who, body, traceparent=TRACEPARENT)
        done = await result(session, base, who, snap["task_id"])
        assert done["status"] == "COMPLETED", done
        assert done["result"]["trace_id"] == TRACE
        for child_id in done["result"]["children"]:
            child = await result(session, base, who, child_id)
            assert child["parent_id"] == snap["task_id"]
            assert child["trace_id"] == TRACE
            assert child["result"] == {"trace_id": TRACE}


async def test_a_celery_native_message_gets_a_trace_when_adopted(
    tenv: dict[str, str], base: str
) -> None:
    """``send_task`` with no traceparent: the worker starts a trace when it adopts the message;
    with one (as OpenTelemetry's Celery instrumentation sends it), the task is in that trace."""
    settings = Settings.from_env(tenv)
    app = Celery("native", broker=tenv["TASKGATE_REDIS_URL"], set_as_current=False)
    from shared.celery_config import celery_config

    app.conf.update(celery_config(settings))
    owner = user()
    try:
        plain = app.send_task("ttest.trace", kwargs={}, headers={"taskgate_user": owner})
        traced = app.send_task(
            "ttest.trace", kwargs={}, headers={"taskgate_user": owner, "traceparent": TRACEPARENT}
        )
    finally:
        app.close()
    async with aiohttp.ClientSession() as session:
        first = await result(session, base, owner, plain.id, adopted=True)
        second = await result(session, base, owner, traced.id, adopted=True)
    assert HEX32.match(first["trace_id"]) and first["result"] == {"trace_id": first["trace_id"]}
    assert second["trace_id"] == TRACE and second["result"] == {"trace_id": TRACE}


async def test_gateway_json_log_names_task_and_trace(
    tenv: dict[str, str], tworker: CeleryWorker, log_dir: Path
) -> None:
    """A ``taskgate gateway`` with ``TASKGATE_LOG_FORMAT=json``: every line it logs is one JSON
    object, and the line about an accepted task names the task, its trace and the user."""
    env = {**tenv, "TASKGATE_LOG_LEVEL": "DEBUG"}
    gw = GatewayProcess(env, log_dir).start()
    who = user()
    try:
        async with aiohttp.ClientSession() as session:
            status, snap = await submit(session, gw.url + "/", who, TRACED, traceparent=TRACEPARENT)
            assert status == 202, snap
            done = await result(session, gw.url + "/", who, snap["task_id"])
            assert done["trace_id"] == TRACE
        lines = await wait_for_lines(gw.log, snap["task_id"])
    finally:
        gw.stop()
    assert any(
        line["trace_id"] == TRACE and line["user"] == who and line["logger"] == "taskgate.http"
        for line in lines
    ), lines
    for line in gw.log.read_text().splitlines():
        # The banner is printed, not logged; everything else is JSON.
        if line.strip() and not line.startswith("taskgate gateway on"):
            assert isinstance(json.loads(line), dict), line


# -- OpenTelemetry ---------------------------------------------------------------------------


class Collector:
    """An OTLP/HTTP trace receiver on loopback: every span posted to ``/v1/traces``, decoded."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def receive(self, request: web.Request) -> web.Response:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        for resource in message.resource_spans:
            service = next(
                (a.value.string_value for a in resource.resource.attributes
                 if a.key == "service.name"),
                "",
            )  # fmt: skip
            for scope in resource.scope_spans:
                for s in scope.spans:
                    self.spans.append(
                        {
                            "service": service,
                            "name": s.name,
                            "trace_id": s.trace_id.hex(),
                            "span_id": s.span_id.hex(),
                            "parent_id": s.parent_span_id.hex(),
                            "attributes": {a.key: a.value.string_value for a in s.attributes},
                        }
                    )
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    async def start(self) -> Collector:
        app = web.Application()
        app.router.add_post("/v1/traces", self.receive)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def test_spans_of_submit_publish_run_and_delivery_share_the_trace(
    tenv: dict[str, str], log_dir: Path
) -> None:
    pytest.importorskip("opentelemetry.sdk.trace", reason="the otel extra (in the test extra)")
    collector = await Collector().start()
    env = isolated_env(
        tenv,
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{collector.port}",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    gw = GatewayProcess(env, log_dir)
    worker = CeleryWorker(env, log_dir, concurrency=1)
    try:
        await asyncio.to_thread(worker.start)
        gw.start()
        who = user()
        # The owner's socket on this gateway: its updates are delivered, in "delivery" spans.
        client = await SocketClient(gw.url, make_token(who)).connect()
        try:
            async with aiohttp.ClientSession() as session:
                status, snap = await submit(
                    session, gw.url + "/", who, TRACED, traceparent=TRACEPARENT
                )
                assert status == 202, snap
                done = await result(session, gw.url + "/", who, snap["task_id"])
                assert done["status"] == "COMPLETED" and done["trace_id"] == TRACE
            await client.wait_terminal(snap["task_id"])
        finally:
            await client.close()
        task_id = snap["task_id"]

        def named(name: str) -> list[dict[str, Any]]:
            return [
                s for s in collector.spans
                if s["name"] == name and s["attributes"].get("taskgate.task_id", task_id) == task_id
                and s["trace_id"] == TRACE
            ]  # fmt: skip

        async with asyncio.timeout(20):
            while not all(named(n) for n in ("submit", "publish", "run", "delivery")):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
    finally:
        gw.stop()
        await asyncio.to_thread(worker.stop)
        await collector.stop()
    (submit_span,) = named("submit")
    (publish,) = named("publish")
    (run,) = named("run")
    # submit under the caller's span, publish under submit, run under publish: one trace.
    assert submit_span["parent_id"] == TRACEPARENT.split("-")[2]
    assert submit_span["service"] == publish["service"] == "taskgate-gateway"
    assert publish["parent_id"] == submit_span["span_id"]
    assert publish["span_id"] == span_id_of(task_id)  # the message's traceparent names it
    assert run["parent_id"] == publish["span_id"] and run["service"] == "taskgate-worker"
    # Each update relayed to the socket: a delivery span under the publish span, on the gateway.
    deliveries = named("delivery")
    assert {d["parent_id"] for d in deliveries} == {publish["span_id"]}
    assert {d["service"] for d in deliveries} == {"taskgate-gateway"}
