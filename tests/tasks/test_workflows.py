"""chain, group and chord on real Celery workers: results flow, failures and cancels settle."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from aiohttp.test_utils import TestClient

from tests.support import SocketClient, auth
from tests.tasks.workflows_support import record_rollups, result_of, user, wait_workflow

Connect = Callable[[str], Awaitable[SocketClient]]


async def test_chain_passes_each_result_on(http: TestClient) -> None:
    who = user()
    body = {"chain": [{"task": "demo.add", "input": {"value": v}} for v in (1, 2, 3)]}
    resp = await http.post("/api/workflows", json=body, headers=auth(who))
    assert resp.status == 202
    ack = await resp.json()
    assert len(ack["task_ids"]) == 3
    snap = await wait_workflow(http, who, ack["workflow_id"])
    assert snap["status"] == "COMPLETED" and snap["percent"] == 100.0
    totals = [(await result_of(http, who, t))["result"]["total"] for t in ack["task_ids"]]
    assert totals == [1.0, 3.0, 6.0]


async def test_group_runs_every_step(http: TestClient) -> None:
    who = user()
    body = {"group": [{"task": "demo.count", "input": {"steps": n, "delay": 0}} for n in (1, 2, 3)]}
    ack = await (await http.post("/api/workflows", json=body, headers=auth(who))).json()
    snap = await wait_workflow(http, who, ack["workflow_id"])
    assert [c["status"] for c in snap["children"]] == ["COMPLETED"] * 3
    results = [(await result_of(http, who, t))["result"] for t in ack["task_ids"]]
    assert results == [{"counted": 1}, {"counted": 2}, {"counted": 3}]


async def test_chord_body_gets_the_header_results(http: TestClient) -> None:
    who = user()
    body = {
        "chord": {
            "header": [{"task": "demo.add", "input": {"value": v}} for v in (1, 2, 3)],
            "body": {"task": "demo.add", "input": {"value": 10}},
        }
    }
    ack = await (await http.post("/api/workflows", json=body, headers=auth(who))).json()
    snap = await wait_workflow(http, who, ack["workflow_id"])
    assert snap["status"] == "COMPLETED", snap
    body_result = await result_of(http, who, ack["task_ids"][-1])
    assert body_result["result"] == {"total": 16.0}


async def test_failed_chain_step_fails_the_rest(http: TestClient) -> None:
    who = user()
    body = {
        "chain": [
            {"task": "demo.add", "input": {"value": 1}},
            {"task": "demo.fail", "input": {"message": "step two broke"}},
            {"task": "demo.add", "input": {"value": 3}},
        ]
    }
    ack = await (await http.post("/api/workflows", json=body, headers=auth(who))).json()
    snap = await wait_workflow(http, who, ack["workflow_id"])
    assert [c["status"] for c in snap["children"]] == ["COMPLETED", "FAILED", "FAILED"]
    assert snap["status"] == "FAILED"
    last = await result_of(http, who, ack["task_ids"][2])
    assert last["error"]["type"] == "WorkflowStepEnded" and last["started_at"] is None


async def test_cancelled_workflow_never_runs_its_later_steps(http: TestClient) -> None:
    who = user()
    body = {
        "chain": [
            {"task": "demo.sleep", "input": {"seconds": 20}},
            {"task": "demo.add", "input": {"value": 1}},
        ]
    }
    ack = await (await http.post("/api/workflows", json=body, headers=auth(who))).json()
    resp = await http.delete(f"/api/workflows/{ack['workflow_id']}", headers=auth(who))
    assert resp.status == 202
    snap = await wait_workflow(http, who, ack["workflow_id"])
    assert [c["status"] for c in snap["children"]] == ["CANCELLED", "CANCELLED"]
    second = await result_of(http, who, ack["task_ids"][1])
    assert second["started_at"] is None


async def test_socket_submit_workflow_and_watch_rollup(sockets: Connect) -> None:
    who = user()
    client = await sockets(who)
    rollups = record_rollups(client)
    ack = await client.call(
        "submit", {"group": [{"task": "demo.count", "input": {"steps": 3, "delay": 0.05}}] * 2}
    )
    assert "workflow_id" in ack, ack
    await client.wait_for(lambda: any(r["status"] == "COMPLETED" for r in rollups), timeout=30)
    seqs = [r["seq"] for r in rollups]
    assert seqs == sorted(seqs)
    assert rollups[-1]["percent"] == 100.0
    assert {c["task_id"] for c in rollups[-1]["children"]} == set(ack["task_ids"])


async def test_bad_workflows_are_refused_and_leave_nothing(http: TestClient) -> None:
    who = user()
    bad = [
        {},
        {"chain": []},
        {"chain": [{"task": "demo.add"}], "group": []},
        {"chain": [{"task": "os.system"}]},
        {"chord": {"header": [{"task": "demo.add"}]}},
        {"group": [{"task": "demo.count", "input": {"steps": -1}}]},
        {"chain": [{"task": "demo.add", "callback_url": "http://x"}]},
    ]
    for body in bad:
        resp = await http.post("/api/workflows", json=body, headers=auth(who))
        assert resp.status == 422, (body, resp.status)
    err = await (
        await http.post(
            "/api/workflows",
            json={"group": [{"task": "demo.count", "input": {"steps": -1}}]},
            headers=auth(who),
        )
    ).json()
    assert err["error"]["details"]["field"] == "group[0].input.steps"
    assert (await (await http.get("/api/tasks", headers=auth(who))).json()) == {"tasks": []}
    other = await http.get(f"/api/workflows/{uuid.uuid4()}", headers=auth(who))
    assert other.status == 404
