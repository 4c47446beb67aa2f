"""Nested workflows on real Celery workers: groups in chains, chains in groups and chord headers,
chords in both; results handed on, failures and cancels reaching nested parts, a roll-up that
never goes back, and refusals naming the field by its path."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp.test_utils import TestClient

from gateway.appkeys import SERVICE
from gateway.tasks.workflow_body import MAX_DEPTH
from tests.support import SocketClient, auth, footprint
from tests.tasks.workflows_support import (
    TERMINAL,
    add,
    record_rollups,
    result_of,
    submit,
    user,
    wait_workflow,
)

Connect = Callable[[str], Awaitable[SocketClient]]


async def totals(http: TestClient, who: str, ids: list[str]) -> list[Any]:
    """Each task's ``total`` (``demo.add``) or whole result, in the order of ``ids``."""
    out = []
    for tid in ids:
        result = (await result_of(http, who, tid))["result"]
        out.append(result["total"] if isinstance(result, dict) and "total" in result else result)
    return out


async def test_a_group_in_a_chain_hands_its_list_of_results_on(http: TestClient) -> None:
    who = user()
    ack = await submit(http, who, {"chain": [add(1), {"group": [add(2), add(3)]}, add(10)]})
    tid = ack["task_ids"]
    assert ack["tree"] == {
        "chain": [
            {"task_id": tid[0], "task": "demo.add"},
            {"group": [{"task_id": tid[1], "task": "demo.add"},
                       {"task_id": tid[2], "task": "demo.add"}]},
            {"task_id": tid[3], "task": "demo.add"},
        ]
    }  # fmt: skip
    snap = await wait_workflow(http, who, ack["workflow_id"])
    assert snap["status"] == "COMPLETED" and snap["percent"] == 100.0, snap
    assert snap["tree"] == ack["tree"]
    # Each group step gets the first result; the last step gets both of theirs.
    assert await totals(http, who, tid) == [1.0, 3.0, 4.0, 17.0]


async def test_chains_groups_and_chords_in_a_chord_header(http: TestClient) -> None:
    who = user()
    body = {
        "chord": {
            "header": [
                {"chain": [add(1), add(2)]},
                {"group": [add(3), add(4)]},
                {"chord": {"header": [add(5)], "body": add(6)}},
            ],
            "body": add(10),
        }
    }
    ack = await submit(http, who, body)
    snap = await wait_workflow(http, who, ack["workflow_id"])
    assert snap["status"] == "COMPLETED", snap
    # chain 1 -> 3; the nested group's 3 and 4 join the header's list; the inner chord's body
    # 6 + 5 = 11; the body: 10 + 3 + 3 + 4 + 11.
    assert await totals(http, who, ack["task_ids"]) == [1.0, 3.0, 3.0, 4.0, 5.0, 11.0, 31.0]


async def test_chords_and_groups_one_after_another_in_a_chain(http: TestClient) -> None:
    who = user()
    chord = {"chord": {"header": [add(2), add(3)], "body": add(10)}}
    first = await submit(http, who, {"chain": [add(1), chord, add(100)]})
    groups = {"chain": [{"group": [add(1), add(2)]}, {"group": [add(3), add(4)]}, add(10)]}
    second = await submit(http, who, groups)
    mixed = await submit(http, who, {"group": [add(1), {"chain": [add(2), add(3)]}]})
    for ack in (first, second, mixed):
        snap = await wait_workflow(http, who, ack["workflow_id"])
        assert snap["status"] == "COMPLETED", snap
    # 1; header 3, 4; body 10 + 7; then 117.
    assert await totals(http, who, first["task_ids"]) == [1.0, 3.0, 4.0, 17.0, 117.0]
    # 1, 2; each of the second group gets [1, 2]: 6, 7; then 10 + 13.
    assert await totals(http, who, second["task_ids"]) == [1.0, 2.0, 6.0, 7.0, 23.0]
    assert await totals(http, who, mixed["task_ids"]) == [1.0, 2.0, 5.0]


def random_body(rng: random.Random, depth: int = 1) -> dict[str, Any]:
    """A random chain, group or chord of ``demo.add`` steps, nested up to ``MAX_DEPTH``."""

    def step(level: int) -> dict[str, Any]:
        if level >= MAX_DEPTH or rng.random() < 0.55:
            return add(rng.randint(1, 99))
        return random_body(rng, level + 1)

    kind = rng.choice(("chain", "group", "chord"))
    if kind == "chord":
        header = [step(depth) for _ in range(rng.randint(1, 3))]
        return {"chord": {"header": header, "body": step(depth)}}
    return {kind: [step(depth) for _ in range(rng.randint(1, 3))]}


def spliced(step: dict[str, Any]) -> bool:
    """Whether a group's (or a chord header's) step is a group, whose results join the list
    (a chain of one step is that step)."""
    if "chain" in step and len(step["chain"]) == 1:
        return spliced(step["chain"][0])
    return "group" in step


def expected(node: dict[str, Any], handed: Any, out: list[float]) -> Any:
    """What Celery hands on, worked out by hand: each ``demo.add`` adds its value to the
    totals it is handed; a group's result is the list of its steps' (a nested group's spliced
    in), a chain's its last step's, a chord's its body's. Appends each task's total to ``out``
    in the body's order (a chord: its header's, then its body's)."""
    if "task" in node:
        parts = handed if isinstance(handed, list) else [handed]
        total = node["input"]["value"] + sum(
            p["total"] for p in parts if isinstance(p, dict) and "total" in p
        )
        out.append(float(total))
        return {"total": total}
    kind, spec = next(iter(node.items()))
    if kind == "chain":
        for step in spec:
            handed = expected(step, handed, out)
        return handed
    steps = spec["header"] if kind == "chord" else spec
    results: list[Any] = []
    for step in steps:
        result = expected(step, handed, out)
        results.extend(result if spliced(step) else [result])
    return expected(spec["body"], results, out) if kind == "chord" else results


async def test_results_flow_through_random_nested_shapes(http: TestClient) -> None:
    """Random nested bodies (a fixed seed) against a worked-out answer for every task."""
    who = user()
    rng = random.Random(14)
    bodies: list[dict[str, Any]] = []
    while len(bodies) < 8:
        body = random_body(rng)
        resp = await http.post("/api/workflows", json=body, headers=auth(who))
        if resp.status == 422:  # a shape refused on purpose (a waited-for part ends in a group)
            continue
        assert resp.status == 202, await resp.text()
        bodies.append({"body": body, "ack": await resp.json()})
    snaps = await asyncio.gather(
        *(wait_workflow(http, who, b["ack"]["workflow_id"], timeout=60) for b in bodies)
    )
    for b, snap in zip(bodies, snaps, strict=True):
        assert snap["status"] == "COMPLETED", (b["body"], snap)
        want: list[float] = []
        expected(b["body"], None, want)
        assert await totals(http, who, b["ack"]["task_ids"]) == want, b["body"]


async def test_a_failure_in_a_nested_group_fails_the_steps_after_the_group(
    http: TestClient,
) -> None:
    who = user()
    broken = {"task": "demo.fail", "input": {"message": "nested step broke"}}
    body = {"chain": [add(1), {"group": [add(2), broken]}, add(10), add(100)]}
    ack = await submit(http, who, body)
    snap = await wait_workflow(http, who, ack["workflow_id"])
    # The failing step's sibling runs (as in a flat chord); everything after the group fails.
    assert [c["status"] for c in snap["children"]] == [
        "COMPLETED", "COMPLETED", "FAILED", "FAILED", "FAILED",
    ]  # fmt: skip
    assert snap["status"] == "FAILED" and snap["percent"] == 100.0
    for tid in ack["task_ids"][3:]:
        later = await result_of(http, who, tid)
        assert later["error"]["type"] == "WorkflowStepEnded" and later["started_at"] is None


async def test_a_failure_in_a_chain_in_a_chord_header_fails_its_chain_and_the_body(
    http: TestClient,
) -> None:
    who = user()
    broken = {"task": "demo.fail", "input": {"message": "header chain broke"}}
    body = {"chord": {"header": [{"chain": [broken, add(2)]}, add(3)], "body": add(10)}}
    ack = await submit(http, who, body)
    snap = await wait_workflow(http, who, ack["workflow_id"])
    assert [c["status"] for c in snap["children"]] == [
        "FAILED", "FAILED", "COMPLETED", "FAILED",
    ]  # fmt: skip
    assert snap["status"] == "FAILED"
    body_record = await result_of(http, who, ack["task_ids"][-1])
    assert body_record["error"]["type"] == "WorkflowStepEnded"
    assert body_record["started_at"] is None


async def test_cancel_reaches_every_nested_part(http: TestClient) -> None:
    who = user()
    sleeper = {"task": "demo.sleep", "input": {"seconds": 20}}
    chord = {"chord": {"header": [add(3)], "body": add(4)}}
    body = {"chain": [sleeper, {"group": [add(1), {"chain": [add(2), chord]}]}]}
    ack = await submit(http, who, body)
    resp = await http.delete(f"/api/workflows/{ack['workflow_id']}", headers=auth(who))
    assert resp.status == 202
    snap = await wait_workflow(http, who, ack["workflow_id"])
    assert [c["status"] for c in snap["children"]] == ["CANCELLED"] * 5
    assert snap["status"] == "CANCELLED"
    for tid in ack["task_ids"][1:]:
        assert (await result_of(http, who, tid))["started_at"] is None


async def test_the_rolled_up_percent_never_goes_back(sockets: Connect) -> None:
    """Every roll-up pushed on the socket, with real workers: the percent never falls (not even
    when a nested task retries and its own percent starts again from 0) and it ends at 100 with
    COMPLETED."""
    who = user()
    client = await sockets(who)
    rollups = record_rollups(client)
    count = {"task": "demo.count", "input": {"steps": 4, "delay": 0.05}}
    flaky = {"task": "demo.flaky", "input": {"fail_times": 1}}
    body = {
        "chain": [
            count,
            {"group": [flaky, {"chain": [count, count]}, {"chord": {"header": [count, flaky],
                                                                   "body": count}}]},
            count,
        ]
    }  # fmt: skip
    ack = await client.call("submit", body)
    assert "workflow_id" in ack, ack
    wid = ack["workflow_id"]

    def done() -> bool:
        return any(r["workflow_id"] == wid and r["status"] in TERMINAL for r in rollups)

    await client.wait_for(done, timeout=60)
    mine = [r for r in rollups if r["workflow_id"] == wid]
    percents = [r["percent"] for r in mine]
    assert percents == sorted(percents), percents
    assert [r["seq"] for r in mine] == sorted(r["seq"] for r in mine)
    assert mine[-1]["status"] == "COMPLETED" and mine[-1]["percent"] == 100.0, mine[-1]
    # A retry really happened under this roll-up (a child's own percent fell back to 0).
    assert any(c["status"] == "RETRYING" for r in mine for c in r["children"])
    assert {c["task_id"] for c in mine[-1]["children"]} == set(ack["task_ids"])


async def test_a_delayed_later_step_waits_its_countdown_after_it_is_due(
    http: TestClient,
) -> None:
    who = user()
    ack = await submit(http, who, {"chain": [add(1), add(2, countdown=1.5)]})
    snap = await wait_workflow(http, who, ack["workflow_id"])
    assert snap["status"] == "COMPLETED", snap
    first, second = [await result_of(http, who, t) for t in ack["task_ids"]]
    assert second["result"] == {"total": 3.0}
    assert second["started_at"] >= first["finished_at"] + 1.5


async def test_a_delayed_first_step_is_held_with_its_eta(http: TestClient) -> None:
    who = user()
    before = time.time()
    ack = await submit(http, who, {"group": [add(1, countdown=1.0), add(2)]})
    held = await (await http.get(f"/api/tasks/{ack['task_ids'][0]}", headers=auth(who))).json()
    assert held["status"] == "PENDING" and held["eta"] >= before + 1.0
    snap = await wait_workflow(http, who, ack["workflow_id"])
    assert snap["status"] == "COMPLETED", snap
    delayed = await result_of(http, who, ack["task_ids"][0])
    assert delayed["started_at"] >= before + 1.0


async def test_a_later_step_that_expires_ends_expired_and_cancels_the_rest(
    http: TestClient,
) -> None:
    who = user()
    soon = datetime.fromtimestamp(time.time() + 0.5, UTC).isoformat()
    sleeper = {"task": "demo.sleep", "input": {"seconds": 1.5}}
    ack = await submit(http, who, {"chain": [sleeper, add(1, expires=soon), add(2)]})
    snap = await wait_workflow(http, who, ack["workflow_id"])
    assert [c["status"] for c in snap["children"]] == ["COMPLETED", "CANCELLED", "CANCELLED"]
    assert snap["status"] == "CANCELLED"
    expired = await result_of(http, who, ack["task_ids"][1])
    assert expired["error"]["type"] == "Expired" and expired["started_at"] is None
    assert (await result_of(http, who, ack["task_ids"][2]))["started_at"] is None


def nest(depth: int) -> dict[str, Any]:
    """A body nesting ``depth`` levels of chain and group, one task at the bottom."""
    node: dict[str, Any] = add(1)
    for level in range(depth):
        node = {("chain" if level % 2 else "group"): [node]}
    return node


# Within the delay a submit may ask for, beyond what a step after another may wait (60 s with
# the default time limit and visibility timeout).
# Stands for "ten minutes from when the test runs" (made then: collection may be long before).
IN_TEN_MINUTES = "in ten minutes"


def _at_run_time(value: Any) -> Any:
    if value == IN_TEN_MINUTES:
        return datetime.fromtimestamp(time.time() + 600, UTC).isoformat()
    if isinstance(value, dict):
        return {k: _at_run_time(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_at_run_time(v) for v in value]
    return value


BAD_NESTED: list[tuple[Any, str]] = [
    ({"chain": [add(1), {"group": [{"task": "os.system"}]}]}, "chain[1].group[0].task"),
    ({"group": [{"chain": [{"task": "demo.count", "input": {"steps": -1}}]}]},
     "group[0].chain[0].input.steps"),
    ({"chord": {"header": [{"group": [add(1), {"task": "demo.add", "input": {"value": "x"}}]}],
                "body": add(1)}}, "chord.header[0].group[1].input.value"),
    ({"chain": [{"group": [add(1)], "queue": "fast"}]}, "chain[0]"),
    ({"chain": [add(1), {"group": []}]}, "chain[1].group"),
    ({"group": [{"chord": {"header": [add(1)]}}]}, "group[0].chord"),
    ({"chain": [{"group": [add(1, callback_url="http://x")]}]}, "chain[0].group[0].callback_url"),
    (nest(5), "group[0].chain[0].group[0].chain[0].group"),
    ({"chain": [{"group": [add(1)] * 100}, {"group": [add(1)] * 100}, add(1)]}, "chain[2]"),
    ({"chain": [{"group": [add(1)] * 60}, {"chain": [add(1)] * 100}]}, "chain[0].group[50]"),
    ({"chord": {"header": [{"chain": [add(1), {"group": [add(2), add(3)]}]}], "body": add(4)}},
     "chord.header[0].chain"),
    ({"chain": [{"group": [{"chain": [add(1), {"group": [add(2)]}]}]}, add(3)]},
     "chain[0].group[0].chain"),
    ({"chain": [add(1), add(2, countdown=3600)]}, "chain[1].countdown"),
    ({"chain": [add(1), {"group": [add(2, eta=IN_TEN_MINUTES)]}]}, "chain[1].group[0].eta"),
]  # fmt: skip


async def test_bad_nested_workflows_name_the_field_and_leave_nothing(http: TestClient) -> None:
    who = user()
    store = http.server.app[SERVICE].records.client
    prefix = http.server.app[SERVICE].settings.key_prefix

    async def workflows() -> int:
        return len([k async for k in store.scan_iter(match=f"{prefix}workflow:*", count=1000)])

    before = (await footprint(store, prefix), await workflows())
    for body, field in BAD_NESTED:
        resp = await http.post("/api/workflows", json=_at_run_time(body), headers=auth(who))
        assert resp.status == 422, (field, resp.status)
        error = (await resp.json())["error"]
        assert error["details"]["field"] == field, (field, error)
    assert (await (await http.get("/api/tasks", headers=auth(who))).json()) == {"tasks": []}
    assert (await footprint(store, prefix), await workflows()) == before
    other = await http.get(f"/api/workflows/{uuid.uuid4()}", headers=auth(who))
    assert other.status == 404


async def test_the_limits_themselves_are_accepted(http: TestClient) -> None:
    """At the limits, not over them: four levels deep, and a chord of 100 steps and a body."""
    who = user()
    deep = await submit(http, who, nest(4))
    wide = await submit(http, who, {"chord": {"header": [add(1)] * 100, "body": add(1)}})
    assert (await wait_workflow(http, who, deep["workflow_id"]))["status"] == "COMPLETED"
    assert (await wait_workflow(http, who, wide["workflow_id"], timeout=60))["status"] == (
        "COMPLETED"
    )
    body_record = await result_of(http, who, wide["task_ids"][-1])
    assert body_record["result"] == {"total": 101.0}
