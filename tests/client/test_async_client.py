"""``AsyncClient`` against a real gateway process and a real Celery worker: every method, the
contract's errors as typed exceptions, and ``follow`` in seq order."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest

from client import (
    AsyncClient,
    Conflict,
    InvalidInput,
    NotFound,
    TaskgateError,
    Timeout,
    Unauthorized,
    UnknownTask,
    submit_body,
)
from tests.client.helpers import worker_held
from tests.support import GatewayProcess, make_token

COUNT = {"steps": 3, "delay": 0.05}


async def test_submit_get_list_result_and_task_types(remote: GatewayProcess, token: str) -> None:
    async with AsyncClient(remote.url, token) as client:
        snap = await client.submit(
            "demo.count", COUNT, queue="heavy", priority=3, idempotency_key=uuid.uuid4().hex,
            traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )  # fmt: skip
        task_id = snap["task_id"]
        assert snap["status"] == "PENDING" and snap["seq"] == 1 and snap["queue"] == "heavy"
        assert snap["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
        got = await client.get(task_id)
        assert got["task_id"] == task_id and got["task"] == "demo.count"

        final = await client.result(task_id, wait=30)
        assert final["status"] == "COMPLETED" and final["result"] == {"counted": 3}
        assert final["progress"]["percent"] == 100
        assert await client.result(task_id, wait=0) == final  # ended: answered at once
        assert await client.result(task_id) == final  # no wait given: until it ends

        listed = await client.list()
        assert [s["task_id"] for s in listed] == [task_id]
        assert [s["task_id"] for s in await client.list(status="COMPLETED")] == [task_id]
        assert await client.list(status="RUNNING") == []
        second = await client.submit("demo.count", COUNT)
        newest_first = [s["task_id"] for s in await client.list(limit=10)]
        assert newest_first == [second["task_id"], task_id]
        assert [s["task_id"] for s in await client.list(limit=1)] == [second["task_id"]]
        await client.result(second["task_id"], wait=30)

        types = {t["name"]: t for t in await client.task_types()}
        assert {"demo.count", "demo.fail", "demo.sleep", "faults.quick_limit"} <= set(types)
        schema = types["demo.count"]["input_schema"]
        assert schema["properties"]["steps"]["maximum"] == 10000
        assert types["demo.count"]["queue"] == "fast"


async def test_submit_many_answers_each_item_in_order(remote: GatewayProcess, token: str) -> None:
    async with AsyncClient(remote.url, token) as client:
        answers = await client.submit_many(
            [
                submit_body("demo.count", COUNT),
                submit_body("demo.count", {"steps": 0}),
                {"task": "demo.add", "input": {"value": 2}},
            ]
        )
        assert len(answers) == 3
        first, bad, third = answers
        assert isinstance(first, dict) and isinstance(third, dict)
        assert isinstance(bad, InvalidInput) and bad.field == "input.steps"
        for accepted in (first, third):
            done = await client.result(accepted["task_id"], wait=30)
            assert done["status"] == "COMPLETED"
        assert (await client.get(third["task_id"]))["result"] == {"total": 2.0}


async def test_cancel_and_a_result_that_does_not_come_in_time(
    remote: GatewayProcess, token: str
) -> None:
    async with AsyncClient(remote.url, token) as client:
        snap = await client.submit("demo.sleep", {"seconds": 120})
        task_id = snap["task_id"]
        try:
            with pytest.raises(Timeout) as caught:
                await client.result(task_id, wait=0.5)
            assert caught.value.status == 408 and caught.value.code == "timeout"
        finally:
            asked = await client.cancel(task_id)
        assert asked["task_id"] == task_id
        final = await client.result(task_id, wait=30)
        assert final["status"] == "CANCELLED"
        # Cancelling what already ended changes nothing.
        assert (await client.cancel(task_id))["status"] == "CANCELLED"


async def test_errors_are_typed_with_the_contracts_codes(
    remote: GatewayProcess, token: str
) -> None:
    async with AsyncClient(remote.url, token) as client:
        report = {"rows": 3, "columns": ["a"], "options": {"format": "xml"}}
        with pytest.raises(InvalidInput) as invalid:
            await client.submit("demo.report", report)
        assert invalid.value.status == 422 and invalid.value.code == "invalid_input"
        assert invalid.value.field == "input.options.format"
        assert invalid.value.details["field"] == "input.options.format"
        assert invalid.value.reason

        with pytest.raises(UnknownTask) as unknown:
            await client.submit("no.such.task", {})
        assert unknown.value.status == 422 and isinstance(unknown.value, InvalidInput)

        with pytest.raises(InvalidInput) as priority:
            await client.submit("demo.count", COUNT, priority=12)
        assert priority.value.field == "priority"

        with pytest.raises(NotFound) as missing:
            await client.get(str(uuid.uuid4()))
        assert missing.value.status == 404 and missing.value.code == "not_found"

        key = uuid.uuid4().hex
        await client.submit("demo.count", COUNT, idempotency_key=key)
        with pytest.raises(Conflict) as conflict:
            await client.submit("demo.count", {"steps": 2}, idempotency_key=key)
        assert conflict.value.status == 409

        # Another user's task answers exactly as an unknown one.
        mine = await client.submit("demo.count", COUNT)
    async with AsyncClient(remote.url, make_token("someone-else")) as other:
        with pytest.raises(NotFound):
            await other.get(mine["task_id"])
        with pytest.raises(NotFound):
            await other.cancel(mine["task_id"])

    async with AsyncClient(remote.url, "not-a-token") as bad:
        with pytest.raises(Unauthorized) as refused:
            await bad.list()
        assert refused.value.status == 401
        with pytest.raises(Unauthorized):
            async for _ in bad.follow(mine["task_id"]):
                pass
        assert isinstance(refused.value, TaskgateError)


async def test_follow_yields_every_seq_from_1_in_order_to_completed(
    remote: GatewayProcess, token: str
) -> None:
    """The task waits PENDING behind a held worker until the follower has its first
    snapshot; then every change reaches it live: seqs 1..n, in order, COMPLETED last."""
    async with AsyncClient(remote.url, token) as client:
        seen: list[dict[str, object]] = []
        first = asyncio.Event()

        async def follow(task_id: str) -> None:
            async for snap in client.follow(task_id):
                seen.append(snap)
                first.set()

        async with worker_held(client):
            snap = await client.submit("demo.count", {"steps": 8, "delay": 0.05})
            following = asyncio.create_task(follow(snap["task_id"]))
            async with asyncio.timeout(20):
                await first.wait()
            assert seen[0]["status"] == "PENDING"
        async with asyncio.timeout(30):
            await following
        seqs = [s["seq"] for s in seen]
        assert seqs == list(range(1, len(seen) + 1)), seqs
        assert [s["status"] for s in seen][-1] == "COMPLETED"
        assert all(s["status"] in {"PENDING", "RUNNING"} for s in seen[:-1])
        percents = [s["progress"]["percent"] for s in seen]  # type: ignore[index]
        assert percents == sorted(percents) and percents[-1] == 100
        assert seen[-1] == await client.get(snap["task_id"])
        # Following a task that ended yields its terminal snapshot, once.
        assert [s async for s in client.follow(snap["task_id"])] == [seen[-1]]
        assert [s async for s in client.follow(snap["task_id"], since=seqs[-1])] == []
        with pytest.raises(NotFound):
            async for _ in client.follow(str(uuid.uuid4())):
                pass


async def test_submit_and_follow_sees_seq_1_without_any_help(
    remote: GatewayProcess, token: str
) -> None:
    """Submitted over the follower's socket: subscribed before the task is published."""
    async with AsyncClient(remote.url, token) as client:
        seen = [s async for s in client.submit_and_follow("demo.count", {"steps": 5, "delay": 0})]
        seqs = [s["seq"] for s in seen]
        assert seqs == list(range(1, len(seen) + 1)), seqs
        assert seen[0]["status"] == "PENDING" and seen[-1]["status"] == "COMPLETED"
        assert seen[-1]["result"] == {"counted": 5}
        assert len({s["task_id"] for s in seen}) == 1
        with pytest.raises(InvalidInput) as bad:
            async for _ in client.submit_and_follow("demo.count", {"steps": "many"}):
                pass
        assert bad.value.field == "input.steps"


async def test_follow_falls_back_to_the_record_when_the_socket_cannot_connect(
    remote: GatewayProcess, token: str
) -> None:
    """A gateway whose Socket.IO path answers nothing (an HTTP proxy in front that passes
    /api/ only): following reads the record instead, and still ends at the terminal one."""
    from aiohttp import ClientSession, web

    async def proxy(request: web.Request) -> web.StreamResponse:
        if not request.path.startswith("/api/"):
            raise web.HTTPNotFound()
        async with (
            ClientSession() as session,
            session.request(
                request.method, remote.url + request.path_qs, headers=request.headers,
                data=await request.read(),
            ) as resp,
        ):  # fmt: skip
            return web.Response(
                body=await resp.read(), status=resp.status, content_type=resp.content_type
            )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with AsyncClient(f"http://127.0.0.1:{port}", token) as client:
            snap = await client.submit("demo.count", {"steps": 4, "delay": 0.2})
            seen = [s async for s in client.follow(snap["task_id"], poll=0.2)]
        seqs = [s["seq"] for s in seen]
        assert seqs == sorted(set(seqs)) and seen[-1]["status"] == "COMPLETED"
    finally:
        with contextlib.suppress(Exception):
            await runner.cleanup()
