"""Property-based fuzzing (hypothesis) of the submit body over HTTP and of Socket.IO event
payloads, against a real gateway: never a 5xx, the connection and the process stay up, and a
rejected submit leaves nothing behind (no record, nothing on the broker).

hypothesis drives synchronous code, so each fuzz loop runs in a thread of its own (HTTP with
requests, Socket.IO with a client on the thread's own event loop) while the gateway serves on
the test's loop.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
import requests
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.registry import all_tasks
from shared.settings import Settings
from tests.support import SocketClient, isolated_env, make_token, serve_gateway

ServerFactory = Callable[..., Awaitable[TestServer]]
HTTP_EXAMPLES = 300
SOCKET_EXAMPLES = 200
FUZZ = settings(
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def json_values(*, strict: bool) -> st.SearchStrategy[Any]:
    """Any JSON value; unless ``strict``, also NaN, Infinity and integers beyond 64 bits."""
    ints = INT64 if strict else st.integers()
    floats = st.floats(allow_nan=not strict, allow_infinity=not strict)
    leaves = st.none() | st.booleans() | ints | floats | st.text(max_size=40)
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                    max_size=4),
        max_leaves=16,
    )  # fmt: skip


def submit_bodies(*, strict: bool) -> st.SearchStrategy[Any]:
    values = json_values(strict=strict)
    names = st.sampled_from(
        [*sorted(all_tasks()), "os.system", "builtins.eval", "", "demo.count ", "DEMO.COUNT",
         "celery.chord_unlock", "worker.demo.count", "../demo.count"]
    ) | st.text(max_size=30)  # fmt: skip
    fields = st.sampled_from(
        ["steps", "delay", "seconds", "limit", "message", "after", "rows", "columns", "options"]
    )
    inputs = st.dictionaries(fields | st.text(max_size=8), values, max_size=4) | values
    options = st.dictionaries(
        st.sampled_from(
            ["queue", "priority", "idempotency_key", "callback_url", "eta", "countdown",
             "exchange", "routing_key", "task_id", "headers", "serializer", "link"]
        ),
        st.sampled_from(["fast", "heavy", "celery", 0, 5, 9, 10, -1]) | values,
        max_size=3,
    )  # fmt: skip
    structured = st.builds(lambda t, i, o: {"task": t, "input": i, **o}, names, inputs, options)
    return st.one_of(near_valid_bodies(), structured, values)


def schema_values(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values for a JSON Schema (a task's ``input_schema``, ``$ref``-free) around its bounds:
    mostly inside, sometimes just outside; nested objects, lists and enums included."""
    if "enum" in schema:
        return st.sampled_from(schema["enum"]) | st.text(max_size=6)
    if "anyOf" in schema:
        return st.one_of([schema_values(s) for s in schema["anyOf"]])
    kind = schema.get("type")
    if kind in ("integer", "number"):
        low = schema.get("minimum", -10.0)
        high = schema.get("maximum", low + 100)
        if kind == "integer":
            return st.integers(int(low) - 2, int(high) + 2)
        return st.floats(low - 1, high + 1, allow_nan=False)
    if kind == "string":
        return st.text(max_size=schema.get("maxLength", 50) + 5)
    if kind == "boolean":
        return st.booleans()
    if kind == "array":
        most = schema.get("maxItems", 5)
        return st.lists(schema_values(schema.get("items", {})), max_size=most + 1)
    if kind == "object":
        fields = {k: schema_values(v) for k, v in schema.get("properties", {}).items()}
        required = set(schema.get("required", ()))
        return st.fixed_dictionaries(
            {k: v for k, v in fields.items() if k in required},
            optional={k: v for k, v in fields.items() if k not in required},
        )
    return json_values(strict=True)


def near_valid_bodies() -> st.SearchStrategy[dict[str, Any]]:
    """Bodies built from each task's schema, so that many are accepted."""
    per_task = []
    for name, spec in sorted(all_tasks().items()):
        per_task.append(
            st.fixed_dictionaries(
                {"task": st.just(name), "input": schema_values(spec.schema.json_schema())},
                optional={
                    "priority": st.integers(-1, 10),
                    "queue": st.sampled_from([spec.queue, *spec.queues, "celery"]),
                    "idempotency_key": st.text(min_size=1, max_size=20),
                },
            )
        )
    return st.one_of(per_task)


class RawBody:
    """Bytes sent as they are, whatever they are."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"RawBody({self.data!r})"


class Store:
    """Synchronous counts of what a gateway left in Redis (used from the fuzz threads)."""

    def __init__(self, settings: Settings) -> None:
        assert settings.redis_url is not None
        self.client = redis.Redis.from_url(settings.redis_url)
        self.keys = settings.keys

    def footprint(self, user: str) -> tuple[int, int]:
        """Records, and messages: on the broker's lists or held until due (a delayed submit's),
        counted by task id, so one moving from the hold to the broker counts once."""
        records = int(self.client.zcard(self.keys.user_tasks(user)))
        ids = {m.decode() for m in self.client.zrange(self.keys.delayed, 0, -1)}
        for key in self.client.scan_iter(match=f"{self.keys.broker_prefix}*", count=1000):
            if self.client.type(key) == b"list":
                for raw in self.client.lrange(key, 0, -1):
                    ids.add(json.loads(raw)["headers"]["id"])
        return records, len(ids)


@pytest.fixture
async def fuzz_gate(env: dict[str, str], aiohttp_server: ServerFactory) -> tuple[str, Settings]:
    settings = Settings.from_env(
        isolated_env(env, TASKGATE_SUBMIT_RATE="0", TASKGATE_MAX_ACTIVE="0",
                     TASKGATE_SOCKET_EVENT_RATE="0")
    )  # fmt: skip
    server = await serve_gateway(aiohttp_server, settings)
    return str(server.make_url("/")), settings


async def test_fuzz_http_submit_body(fuzz_gate: tuple[str, Settings]) -> None:
    url, gw_settings = fuzz_gate
    user = f"fz-{uuid.uuid4().hex[:8]}"
    store = Store(gw_settings)
    session = requests.Session()
    session.headers.update(
        {"Authorization": f"Bearer {make_token(user)}", "Content-Type": "application/json"}
    )
    seen: dict[int, int] = {}
    accepted: set[str] = set()

    @settings(FUZZ, max_examples=HTTP_EXAMPLES)
    @given(body=submit_bodies(strict=False) | st.binary(max_size=300).map(RawBody))
    def one(body: Any) -> None:
        before = store.footprint(user)
        data = body.data if isinstance(body, RawBody) else json.dumps(body)
        resp = session.post(url + "api/tasks", data=data, timeout=10)
        seen[resp.status_code] = seen.get(resp.status_code, 0) + 1
        assert resp.status_code in (202, 400, 409, 413, 422), resp.text
        answer = resp.json()
        after = store.footprint(user)
        if resp.status_code == 202 and answer["task_id"] in accepted:
            assert after == before  # an idempotency key replayed: the same task, nothing new
        elif resp.status_code == 202:
            accepted.add(answer["task_id"])
            assert answer["status"] == "PENDING"
            assert after == (before[0] + 1, before[1] + 1)
        else:
            assert set(answer) == {"error"} and answer["error"]["message"]
            assert after == before, (body, answer)

    try:
        await asyncio.to_thread(one)
        alive = await asyncio.to_thread(session.get, url + "healthz", timeout=5)
        assert alive.status_code == 200
    finally:
        session.close()
        store.client.close()
    print(f"HTTP submit fuzz: {sum(seen.values())} cases, statuses {dict(sorted(seen.items()))}")
    assert sum(seen.values()) >= HTTP_EXAMPLES // 2
    assert seen.get(202) and seen.get(422) and seen.get(400)


EXPECTED_ACK_KEYS = {
    "submit": ({"task_id", "status", "seq"}, {"error"}),
    "cancel": ({"ok"}, {"error"}),
    "watch": ({"ok", "sent"}, {"error"}),
}


async def test_fuzz_socket_event_payloads(fuzz_gate: tuple[str, Settings]) -> None:
    url, gw_settings = fuzz_gate
    user = f"fz-{uuid.uuid4().hex[:8]}"
    store = Store(gw_settings)
    seen: dict[str, int] = {}
    accepted: set[str] = set()
    events = st.sampled_from(sorted(EXPECTED_ACK_KEYS))
    payloads = submit_bodies(strict=True) | st.fixed_dictionaries(
        {"task_id": st.sampled_from([str(uuid.uuid4())]) | json_values(strict=True)}
    ) | st.fixed_dictionaries(
        {"tasks": st.dictionaries(st.text(max_size=40), json_values(strict=True), max_size=4)
         | json_values(strict=True)}
    )  # fmt: skip

    def run() -> None:
        loop = asyncio.new_event_loop()
        client = loop.run_until_complete(SocketClient(url, make_token(user)).connect())

        @settings(FUZZ, max_examples=SOCKET_EXAMPLES)
        @given(event=events, payload=payloads)
        def one(event: str, payload: Any) -> None:
            before = store.footprint(user)
            ack = loop.run_until_complete(client.call(event, payload, timeout=10))
            ok_keys, error_keys = EXPECTED_ACK_KEYS[event]
            assert isinstance(ack, dict) and set(ack) in (ok_keys, error_keys), ack
            outcome = f"{event}:{ack['error']['code'] if 'error' in ack else 'ok'}"
            seen[outcome] = seen.get(outcome, 0) + 1
            assert ack.get("error", {}).get("code") != "internal", ack
            after = store.footprint(user)
            if event == "submit" and "error" not in ack and ack["task_id"] in accepted:
                assert after == before  # an idempotency key replayed
            elif event == "submit" and "error" not in ack:
                accepted.add(ack["task_id"])
                assert after == (before[0] + 1, before[1] + 1)
            elif event == "submit":
                assert after == before, (payload, ack)
            assert client.sio.connected

        try:
            one()
        finally:
            loop.run_until_complete(client.close())
            loop.close()

    try:
        await asyncio.to_thread(run)
    finally:
        store.client.close()
    outcomes = dict(sorted(seen.items()))
    print(f"Socket.IO event fuzz: {sum(seen.values())} cases, outcomes {outcomes}")
    assert sum(seen.values()) >= SOCKET_EXAMPLES // 2
