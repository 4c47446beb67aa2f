"""``GET /api/openapi.json`` describes the API truthfully; schemathesis checks it against a real
gateway (no 5xx, every status, content type, header and body as documented), and the answers of
a real nested workflow, run by the real workers, are checked against it with jsonschema."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient, TestServer
from jsonschema import Draft202012Validator

from gateway.appkeys import SERVICE
from gateway.http.openapi import JSON, OPERATIONS, routes_of
from gateway.tasks.workflow_body import MAX_CARRIED, MAX_DEPTH, MAX_STEPS, MAX_TASKS
from shared.registry import all_tasks
from shared.schema import SNAPSHOT_FIELDS, Snapshot
from shared.settings import Settings
from shared.status import TaskStatus
from tests.support import auth, footprint, isolated_env, make_token, serve_gateway
from tests.tasks.workflows_support import add, submit, user, wait_workflow

ServerFactory = Callable[..., Awaitable[TestServer]]
# Cases per operation and phase; the whole run stays well under a minute.
MAX_EXAMPLES = 40
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
    ]
)


async def test_document_is_openapi_31_built_from_the_registry(http: TestClient) -> None:
    resp = await http.get("/api/openapi.json")  # no token needed for the description
    assert resp.status == 200
    doc = await resp.json()
    assert doc["openapi"] == "3.1.0"
    variants = doc["components"]["schemas"]["SubmitBody"]["oneOf"]
    by_name = {v["properties"]["task"]["const"]: v for v in variants}
    assert set(by_name) == set(all_tasks())
    steps = by_name["demo.count"]["properties"]["input"]["anyOf"][0]["properties"]["steps"]
    assert steps == {
        "type": "integer",
        "minimum": 1,
        "maximum": 10000,
        "default": 10,
        "title": "Steps",
        "description": "How many steps to count",
    }
    # Nested, list and enum inputs come through as the model states them, $ref-free.
    report = by_name["demo.report"]["properties"]["input"]["anyOf"][0]
    assert report == all_tasks()["demo.report"].schema.json_schema()
    assert report["properties"]["options"]["properties"]["format"]["enum"] == ["csv", "json"]
    assert "$ref" not in json.dumps(doc["components"]["schemas"]["SubmitBody"])
    assert by_name["demo.count"]["additionalProperties"] is False


async def test_document_lists_exactly_the_routes_that_exist(http: TestClient) -> None:
    doc = await (await http.get("/api/openapi.json")).json()
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    present = routes_of(http.server.app)
    assert documented <= present
    # Every API route of the router is described (HEAD and the web client's pages aside).
    api = {(m, p) for m, p in present if p.startswith("/api/") and m != "HEAD"}
    undocumented = api - set(OPERATIONS)
    assert not undocumented, f"add these to gateway/openapi.py: {sorted(undocumented)}"


def validator(doc: dict[str, Any], path: str, method: str, status: str = "") -> Any:
    """A JSON Schema validator for an operation's answer with ``status`` (or, without one, its
    request body), its ``$ref``s resolved in the document."""
    op = doc["paths"][path][method]
    part = op["responses"][status] if status else op["requestBody"]
    return against(doc, part["content"][JSON]["schema"])


def against(doc: dict[str, Any], schema: dict[str, Any]) -> Any:
    """A validator for ``schema``, its ``$ref``s resolved in the document's components."""
    return Draft202012Validator({**schema, "components": doc["components"]})


async def test_nested_workflow_answers_match_the_document(http: TestClient) -> None:
    doc = await (await http.get("/api/openapi.json")).json()
    body_schema = validator(doc, "/api/workflows", "post")
    ack_schema = validator(doc, "/api/workflows", "post", "202")
    snap_schema = validator(doc, "/api/workflows/{workflow_id}", "get", "200")
    cancel_schema = validator(doc, "/api/workflows/{workflow_id}", "delete", "202")
    limits = doc["components"]["schemas"]["WorkflowBody"]
    for number in (MAX_DEPTH, MAX_STEPS, MAX_TASKS, MAX_CARRIED):
        assert f" {number} " in limits["description"]
    assert limits["oneOf"][0]["properties"]["chain"]["maxItems"] == MAX_STEPS

    who = user()
    chord = {"chord": {"header": [add(3), {"chain": [add(4), add(5)]}], "body": add(6)}}
    body = {"chain": [add(1), {"group": [add(2), chord]}, add(7)]}
    body_schema.validate(body)
    ack = await submit(http, who, body)
    ack_schema.validate(ack)
    assert ack["kind"] == "chain" and len(ack["task_ids"]) == 7
    wid = ack["workflow_id"]
    running = await http.get(f"/api/workflows/{wid}", headers=auth(who))
    snap_schema.validate(await running.json())
    done = await wait_workflow(http, who, wid)
    snap_schema.validate(done)
    assert done["status"] == "COMPLETED" and done["tree"] == ack["tree"]

    # A child whose record is gone (its retention passed) is listed EXPIRED, its task null.
    store = http.server.app[SERVICE].records.client
    await store.delete(http.server.app[SERVICE].settings.keys.task(ack["task_ids"][0]))
    gone = await (await http.get(f"/api/workflows/{wid}", headers=auth(who))).json()
    assert gone["children"][0] == {
        "task_id": ack["task_ids"][0], "task": None, "status": "EXPIRED", "percent": 100.0,
        "seq": 0,
    }  # fmt: skip
    snap_schema.validate(gone)

    sleeper = {"task": "demo.sleep", "input": {"seconds": 20}}
    ack = await submit(http, who, {"group": [sleeper, {"chain": [add(1), add(2)]}]})
    ack_schema.validate(ack)
    resp = await http.delete(f"/api/workflows/{ack['workflow_id']}", headers=auth(who))
    assert resp.status == 202
    cancel_schema.validate(await resp.json())
    snap_schema.validate(await wait_workflow(http, who, ack["workflow_id"]))


async def test_the_snapshot_schema_is_the_code_s_and_real_snapshots_match_it(
    http: TestClient, sockets: Any
) -> None:
    """One definition: the document's Snapshot has exactly ``shared.schema.Snapshot``'s fields
    (which the Lua scripts write, tests/store/test_lua_scripts.py), each always present; and
    the snapshots a real task goes through (answer, socket events, GET) are valid against it."""
    doc = await (await http.get("/api/openapi.json")).json()
    schema = doc["components"]["schemas"]["Snapshot"]
    assert list(schema["properties"]) == list(SNAPSHOT_FIELDS) == list(Snapshot.__annotations__)
    assert schema["required"] == list(SNAPSHOT_FIELDS)
    assert schema["properties"]["status"]["enum"] == list(TaskStatus.__members__)
    check = against(doc, {"$ref": "#/components/schemas/Snapshot"})
    who = user()
    client = await sockets(who)
    seen: list[dict[str, Any]] = []
    for body in (
        {
            "task": "demo.report",
            "input": {"rows": 40, "columns": ["a"], "options": {"format": "csv"}},
        },
        {"task": "demo.fail", "input": {"message": "boom"}},
    ):
        resp = await http.post("/api/tasks", json=body, headers=auth(who))
        assert resp.status == 202, await resp.text()
        answer = await resp.json()
        final = await client.wait_terminal(answer["task_id"])
        got = await (await http.get(f"/api/tasks/{answer['task_id']}", headers=auth(who))).json()
        seen += [answer, *client.events[answer["task_id"]], got]
        assert got["status"] == final["status"]
    for snap in seen:
        check.validate(snap)
    assert {s["status"] for s in seen} >= {"PENDING", "RUNNING", "COMPLETED", "FAILED"}
    # Every field is always there: a snapshot without one is not valid.
    broken = {**seen[-1]}
    del broken["stalled"]
    assert not check.is_valid(broken)


async def test_the_workflow_body_schema_refuses_what_the_gateway_refuses(
    http: TestClient,
) -> None:
    doc = await (await http.get("/api/openapi.json")).json()
    body_schema = validator(doc, "/api/workflows", "post")
    who = user()
    refused: list[Any] = [
        {"chain": []},
        {"chain": [add(1)], "group": [add(2)]},
        {"group": [add(1, idempotency_key="k")]},
        {"chain": [{"group": [add(1, callback_url="http://example.com/")]}]},
        {"chord": {"header": [add(1)]}},
        {"chord": {"header": [add(1)], "body": add(2), "extra": 1}},
        {"chain": [{"chain": [add(1)], "group": [add(2)]}]},
        {"chain": [add(1) for _ in range(MAX_STEPS + 1)]},
    ]
    for body in refused:
        assert not body_schema.is_valid(body), body
        resp = await http.post("/api/workflows", json=body, headers=auth(who))
        assert resp.status == 422, (body, await resp.text())
    nested = {"chain": [{"group": [{"chord": {"header": [add(1)], "body": add(2)}}]}]}
    assert body_schema.is_valid(nested)
    against(doc, {"$ref": "#/components/schemas/WorkflowTree"}).validate(
        (await submit(http, who, nested))["tree"]
    )


async def test_schemathesis_finds_no_failure(
    env: dict[str, str], aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    # A gateway of its own (no worker drains its queues; no rate or quota in the way), so the
    # generated submits neither load the session's worker nor trip 429s.
    settings = Settings.from_env(
        isolated_env(env, TASKGATE_SUBMIT_RATE="0", TASKGATE_MAX_ACTIVE="0")
    )
    server = await serve_gateway(aiohttp_server, settings)
    url = str(server.make_url("/"))
    report = tmp_path / "schemathesis.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "schemathesis.cli", "run", url + "api/openapi.json",
        "--checks", CHECKS, "--max-examples", str(MAX_EXAMPLES), "--seed", "4",
        "--phases", "examples,coverage,fuzzing", "--generation-database", "none",
        "--header", f"Authorization: Bearer {make_token('schemathesis')}",
        "--request-timeout", "10", "--no-color",
        # This gateway has no worker on purpose, so /readyz is rightly 503 (any 5xx fails
        # not_a_server_error); its answers are tested in tests/http/test_readyz.py.
        "--exclude-path", "/readyz",
        "--report", "json", "--report-json-path", str(report),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    async with asyncio.timeout(240):
        out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    summary = _summary(text)
    print(f"schemathesis: {summary}")
    (tmp_path / "schemathesis.txt").write_text(text)
    assert proc.returncode == 0, text[-6000:]
    assert "No issues found" in text or "0 failures" in text or proc.returncode == 0
    async with aiohttp.ClientSession() as session, session.get(url + "healthz") as resp:
        assert resp.status == 200
    assert settings.redis_url is not None
    assert await _records_match_broker(settings)


def _summary(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    keep = [ln for ln in lines if any(w in ln for w in ("passed", "failed", "cases", "Test cases"))]
    return " | ".join(keep[-4:])


async def _records_match_broker(settings: Settings) -> bool:
    """Every accepted submit left one record and one broker message, and every accepted
    workflow a record per task and a message per step that starts at once (its later steps wait
    in those messages); no rejected one left any."""
    import redis.asyncio as aioredis

    assert settings.redis_url is not None
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        counts: dict[str, Any] = await footprint(client, settings.key_prefix)
        in_workflows = starting = workflows = deepest = 0
        async for key in client.scan_iter(match=f"{settings.key_prefix}workflow:*", count=1000):
            raw = await client.hgetall(key)
            workflows += 1
            in_workflows += len(json.loads(raw[b"task_ids"]))
            tree = json.loads(raw[b"tree"])
            starting += _starting(tree)
            deepest = max(deepest, _depth(tree))
    finally:
        await client.aclose()
    print(
        f"schemathesis left {json.dumps(counts)}, {workflows} workflows of {in_workflows} tasks, "
        f"nested {deepest} levels at the most"
    )
    return bool(counts["records"] - in_workflows + starting == counts["broker_messages"])


def _starting(tree: dict[str, Any]) -> int:
    """How many tasks of a workflow's tree start at once (the first of a chain, every one of a
    group or a chord's header)."""
    if "task_id" in tree:
        return 1
    if "chain" in tree:
        return _starting(tree["chain"][0])
    parts = tree["group"] if "group" in tree else tree["chord"]["header"]
    return sum(_starting(part) for part in parts)


def _depth(tree: dict[str, Any]) -> int:
    """Levels of chain, group and chord in a workflow's tree."""
    if "task_id" in tree:
        return 0
    kind, value = next(iter(tree.items()))
    parts = [*value["header"], value["body"]] if kind == "chord" else value
    return 1 + max(_depth(part) for part in parts)
