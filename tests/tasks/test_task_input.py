"""Task input models (shared.task_input): nested objects, lists, enums, optional fields with
defaults and bounds, checked by one validator on the gateway (HTTP and Socket.IO), in a Python
producer and on the worker, with 422 ``details`` naming the field by its path. Real gateway,
worker, Redis; ``demo.report`` is the shipped task with that shape."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import BaseModel, ConfigDict, Field

from shared.errors import ConfigError, InvalidInput
from shared.registry import get_task, task
from shared.task_input import MAX_DEPTH, InputModel, TaskInput
from tests.support import SocketClient, auth
from tests.worker.test_celery_native import poll_terminal, produce
from worker.demo import ReportFormat, ReportOptions

Connect = Callable[[str], Awaitable[SocketClient]]
GOOD = {"rows": 12, "columns": ["id", "name"], "options": {"format": "csv"}}


def who() -> str:
    return f"in-{uuid.uuid4().hex[:8]}"


def report(**changes: Any) -> dict[str, Any]:
    return {"task": "demo.report", "input": {**GOOD, **changes}}


async def refused(http: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    resp = await http.post("/api/tasks", json=body, headers=auth(who()))
    error = (await resp.json())["error"]
    assert resp.status == 422 and error["code"] == "invalid_input", error
    return dict(error["details"])


async def test_a_nested_list_and_enum_input_runs_with_typed_arguments(
    http: TestClient, sockets: Connect
) -> None:
    user = who()
    client = await sockets(user)
    resp = await http.post("/api/tasks", json=report(), headers=auth(user))
    assert resp.status == 202, await resp.text()
    final = await client.wait_terminal((await resp.json())["task_id"])
    assert final["status"] == "COMPLETED", final
    # The default (options.header = true) was filled in; the enum reached the task as a member
    # (the task compares it with ``is``), the list as a list.
    assert final["result"]["format"] == "csv"
    assert final["result"]["preview"][:2] == ["id,name", "id-1,name-1"]
    assert final["result"]["rows"] == 12 and final["result"]["columns"] == ["id", "name"]
    percents = [e["progress"]["percent"] for e in client.events[final["task_id"]]]
    assert percents == sorted(percents) and percents[-1] == 100.0
    resp = await http.post(
        "/api/tasks",
        json=report(options={"format": "json", "header": False}),
        headers=auth(user),
    )
    final = await client.wait_terminal((await resp.json())["task_id"])
    assert final["result"]["preview"][0] == '{"id":"id-1","name":"name-1"}'


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        ({"options": {"format": "xml"}}, "input.options.format", "must be 'csv' or 'json'"),
        ({"options": {"format": "csv", "colour": 1}}, "input.options.colour", "is not a field"),
        ({"options": {}}, "input.options.format", "is required"),
        ({"columns": []}, "input.columns", "at least 1 item"),
        ({"columns": ["a"] * 21}, "input.columns", "at most 20 items"),
        ({"columns": ["a", "x" * 65]}, "input.columns[1]", "at most 64 characters"),
        ({"columns": ["a", 7]}, "input.columns[1]", "must be a valid string"),
        ({"rows": 0}, "input.rows", "greater than or equal to 1"),
        ({"rows": 100_001}, "input.rows", "less than or equal to 100000"),
        ({"rows": "5"}, "input.rows", "must be a valid integer"),
        ({"rows": True}, "input.rows", "must be a valid integer"),
        ({"rows": 2.5}, "input.rows", "must be a valid integer"),
        ({"options": {"format": "csv", "header": "yes"}}, "input.options.header", "boolean"),
        ({"extra": 1}, "input.extra", "is not a field of this task"),
    ],
)
async def test_a_bad_input_is_a_422_naming_the_field_by_its_path(
    http: TestClient, changes: dict[str, Any], field: str, reason: str
) -> None:
    details = await refused(http, report(**changes))
    assert details["field"] == field, details
    assert reason in details["reason"], details
    assert details["errors"][0] == {"field": field, "reason": details["reason"]}


async def test_every_problem_is_listed_and_nothing_is_recorded(
    gateway: TestServer, http: TestClient
) -> None:
    user = who()
    body = {"task": "demo.report", "input": {"rows": 0, "columns": [], "options": {"format": 1}}}
    resp = await http.post("/api/tasks", json=body, headers=auth(user))
    assert resp.status == 422
    details = (await resp.json())["error"]["details"]
    assert {e["field"] for e in details["errors"]} == {
        "input.rows",
        "input.columns",
        "input.options.format",
    }
    listed = await (await http.get("/api/tasks", headers=auth(user))).json()
    assert listed["tasks"] == []


async def test_whole_floats_are_integers_and_missing_optional_fields_take_defaults(
    http: TestClient, sockets: Connect
) -> None:
    """As JSON Schema counts them (tests/http/test_task_types.py holds the schema to that)."""
    user = who()
    client = await sockets(user)
    resp = await http.post("/api/tasks", json=report(rows=3.0), headers=auth(user))
    assert resp.status == 202, await resp.text()
    final = await client.wait_terminal((await resp.json())["task_id"])
    assert final["result"]["rows"] == 3
    # demo.count with no input at all, and with null: every field its default.
    for body in ({"task": "demo.count"}, {"task": "demo.count", "input": None}):
        resp = await http.post("/api/tasks", json=body, headers=auth(user))
        assert resp.status == 202


async def test_a_socket_submit_gets_the_same_details(sockets: Connect) -> None:
    client = await sockets(who())
    ack = await client.call("submit", report(columns=["ok", ""]))
    assert ack["error"]["code"] == "invalid_input"
    assert ack["error"]["details"]["field"] == "input.columns[1]"


async def test_too_deep_an_input_is_refused_cleanly(http: TestClient) -> None:
    deep: Any = 1
    for _ in range(40):
        deep = [deep]
    details = await refused(http, report(columns=deep))
    assert details["field"] == "input.columns[0]", details
    for _ in range(300):  # deeper than JSON is carried here: refused as a whole
        deep = [deep]
    details = await refused(http, report(rows=deep))
    assert details["field"] == "input", details
    # ... and so is a whole float deep down, on the path that turns those into integers.
    nested: Any = 2.0
    for _ in range(MAX_DEPTH + 5):
        nested = [nested]
    details = await refused(http, report(rows=nested))
    assert details["field"] == "input", details


async def test_the_worker_checks_again_what_celery_s_own_api_sent(
    env: dict[str, str], gateway: TestServer
) -> None:
    """The broker is not trusted: a message sent around the gateway (``send_task``) with a bad
    input ends FAILED InvalidInput, naming the field; the function never runs."""
    owner = who()
    bad = {"rows": 3, "columns": ["a"], "options": {"format": "xml"}}
    task_id = await asyncio.to_thread(produce, env, "send_task", "demo.report", owner, bad)
    async with aiohttp.ClientSession() as session:
        final = await poll_terminal(session, str(gateway.make_url("/")), owner, task_id)
    assert final["status"] == "FAILED"
    assert final["error"]["type"] == "InvalidInput"
    assert "input.options.format" in final["error"]["message"]


def test_a_python_producer_is_checked_by_the_same_model_and_may_pass_models() -> None:
    spec = get_task("demo.report")
    given = {"rows": 2, "columns": ["a"], "options": ReportOptions(format=ReportFormat.json)}
    assert spec.schema.validate(given) == {
        "rows": 2,
        "columns": ["a"],
        "options": {"format": "json", "header": True},
    }
    args = spec.schema.arguments(given)
    assert args["options"].format is ReportFormat.json
    with pytest.raises(InvalidInput) as caught:
        spec.schema.validate({**given, "columns": [object()]})
    assert caught.value.details["field"] == "input"


def test_a_model_that_is_not_one_or_lets_unknown_fields_through_is_refused_at_registration() -> (
    None
):
    class Loose(BaseModel):
        n: int = 0

    class Inner(BaseModel):  # nested and loose: refused too
        x: int = 0

    class Outer(TaskInput):
        inner: Inner = Field(default_factory=Inner)

    class Closed(BaseModel):
        model_config = ConfigDict(extra="forbid")
        n: int = 0

    with pytest.raises(ConfigError, match="unknown fields"):
        task("unit.loose", schema=Loose)
    with pytest.raises(ConfigError, match="unknown fields"):
        task("unit.outer", schema=Outer)
    with pytest.raises(ConfigError, match="pydantic model"):
        task("unit.dict", schema={"n": int})  # type: ignore[arg-type]
    assert InputModel.of(Closed).validate({"n": 2}) == {"n": 2}


def test_a_model_that_refers_to_itself_is_refused() -> None:
    class Node(TaskInput):
        children: list[Node] = []

    Node.model_rebuild()
    with pytest.raises(ConfigError, match="refers to itself"):
        InputModel.of(Node)


def test_optional_fields_enums_and_defaults_in_the_schema() -> None:
    class Colour(Enum):
        red = "red"
        blue = "blue"

    class Shape(TaskInput):
        name: str | None = None
        colour: Colour = Colour.red
        sides: int = Field(3, ge=3, le=12)

    model = InputModel.of(Shape)
    schema = model.json_schema()
    assert schema["properties"]["colour"]["enum"] == ["red", "blue"]
    assert schema["properties"]["colour"]["default"] == "red"
    assert {"type": "null"} in schema["properties"]["name"]["anyOf"]
    assert "$defs" not in schema and "$ref" not in str(schema)
    assert model.validate(None) == {"name": None, "colour": "red", "sides": 3}
    assert model.arguments({"colour": "blue"})["colour"] is Colour.blue
    with pytest.raises(InvalidInput) as caught:
        model.validate({"sides": 13})
    assert caught.value.details["field"] == "input.sides"
