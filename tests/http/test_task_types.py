"""``GET /api/task-types`` against a real gateway: every submittable task with its queues, retry
policy and time limits, and an input schema (JSON Schema 2020-12) that accepts exactly what the
gateway accepts."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from jsonschema import Draft202012Validator

from shared.registry import all_tasks
from tests.support import auth, fresh, serve_gateway

ServerFactory = Callable[..., Awaitable[TestServer]]
ClientFactory = Callable[..., Awaitable[TestClient]]
DEMO_QUEUES = {
    "demo.count": ["fast", "heavy"],
    "demo.fail": ["fast"],
    "demo.sleep": ["fast", "heavy"],
    "demo.primes": ["heavy"],
    "demo.add": ["fast"],
    "demo.flaky": ["fast"],
}
# Inputs of demo.count (steps: int 1-10000, delay: float 0-10), accepted or not.
COUNT_INPUTS: list[Any] = [
    {},
    {"steps": 1},
    {"steps": 10000},
    {"steps": 0},
    {"steps": 10001},
    {"steps": -3},
    {"steps": 5.0},  # a whole float is an integer to both
    {"steps": 1e3},
    {"steps": 5.5},
    {"steps": "5"},
    {"steps": True},
    {"steps": None},
    {"steps": [1]},
    {"steps": {"n": 1}},
    {"delay": 0},
    {"delay": 10},
    {"delay": 2},
    {"delay": 10.01},
    {"delay": -0.1},
    {"delay": False},
    {"steps": 3, "delay": 0.5},
    {"steps": 3, "delay": "0.5"},
    {"other": 1},
    {"steps": 1, "extra": "x"},
    [],
    [{"steps": 1}],
    "steps",
    3,
    True,
]


async def _types(client: TestClient, user: str = "types") -> dict[str, dict[str, Any]]:
    resp = await client.get("/api/task-types", headers=auth(user))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert list(body) == ["task_types"]
    return {t["name"]: t for t in body["task_types"]}


@pytest.fixture
async def limits_client(
    env: dict[str, str], aiohttp_server: ServerFactory, aiohttp_client: ClientFactory
) -> TestClient:
    """A gateway that loads the fault tests' tasks too (faults.quick_limit has limits of its own),
    on a key prefix of its own: what it accepts is recorded and queued but never run."""
    settings = fresh(env, TASKGATE_TASK_MODULES="worker.demo,tests.faults.tasks_faults")
    return await aiohttp_client(await serve_gateway(aiohttp_server, settings))


async def test_every_registered_task_is_listed_with_its_queues(http: TestClient) -> None:
    types = await _types(http)
    assert set(types) == set(all_tasks())
    assert not [name for name in types if name.startswith("taskgate.")]  # internal: not listed
    for name, queues in DEMO_QUEUES.items():
        assert types[name]["queues"] == queues, name
        assert types[name]["queue"] == queues[0], name
        assert types[name]["description"], name
    assert "retries" not in types["demo.count"] and "time_limit" not in types["demo.count"]


async def test_task_types_need_a_token(http: TestClient) -> None:
    resp = await http.get("/api/task-types")
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "unauthorized"


async def test_demo_flaky_shows_its_retry_policy(http: TestClient) -> None:
    flaky = (await _types(http))["demo.flaky"]
    assert flaky["retries"] == {
        "max_retries": 5,
        "retry_for": ["FlakyError"],
        "backoff": True,
        "backoff_s": 0.5,
        "backoff_max_s": 2.0,
        "jitter": True,
    }
    assert "time_limit" not in flaky


async def test_a_task_with_limits_of_its_own_shows_them(limits_client: TestClient) -> None:
    types = await _types(limits_client)
    assert types["faults.quick_limit"]["time_limit"] == {"soft": 1, "hard": 2}
    # Declared with max_retries and no retry_for: retried by ctx.retry only.
    assert types["faults.retry_later"]["retries"]["max_retries"] == 2
    assert types["faults.retry_later"]["retries"]["retry_for"] == []


async def test_every_input_schema_is_a_valid_2020_12_schema(limits_client: TestClient) -> None:
    for name, entry in (await _types(limits_client)).items():
        schema = entry["input_schema"]
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema", name
        Draft202012Validator.check_schema(schema)
        assert schema["type"] == "object" and schema["additionalProperties"] is False, name


async def test_demo_count_schema_accepts_exactly_what_the_gateway_accepts(
    limits_client: TestClient,
) -> None:
    schema = (await _types(limits_client))["demo.count"]["input_schema"]
    validator = Draft202012Validator(schema)
    user = f"types-{uuid.uuid4().hex[:6]}"
    verdicts = []
    for data in COUNT_INPUTS:
        body = {"task": "demo.count", "input": data}
        resp = await limits_client.post("/api/tasks", json=body, headers=auth(user))
        assert resp.status in (202, 422), await resp.text()
        if resp.status == 422:
            error = (await resp.json())["error"]
            assert error["details"]["field"].startswith("input"), error
        verdicts.append((data, resp.status == 202, validator.is_valid(data)))
    assert [v for v in verdicts if v[1] != v[2]] == []
    # Both sides of the line are exercised.
    assert {accepted for _, accepted, _ in verdicts} == {True, False}
    # Left out or null, the input means every default: the gateway takes it.
    resp = await limits_client.post("/api/tasks", json={"task": "demo.count"}, headers=auth(user))
    assert resp.status == 202
