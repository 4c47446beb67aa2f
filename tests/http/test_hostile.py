"""A table of hostile inputs, over HTTP and Socket.IO, each with the answer it must get.

Every case runs against a real gateway of its own key prefix (no worker consumes its queues), so
"a rejected request changes nothing" is checked by counting: no task record and no message on
the broker's queues afterwards, and the gateway still answers ``/healthz``. Socket.IO cases also
keep a well-behaved client of another user connected and check it still works: a hostile
connection is closed, nothing else.
"""

from __future__ import annotations

import asyncio
import json
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import pytest
import redis.asyncio as aioredis
import socketio
from aiohttp.test_utils import TestServer
from blockbuster import blockbuster_ctx

from gateway.http import api as http_api
from shared.settings import Settings
from tests.support import (
    SECRET,
    RawSocket,
    SocketClient,
    footprint,
    isolated_env,
    make_token,
    serve_gateway,
)

MIB = 1024 * 1024


@dataclass
class Gate:
    server: TestServer
    settings: Settings
    session: aiohttp.ClientSession
    redis: aioredis.Redis

    @property
    def url(self) -> str:
        return str(self.server.make_url("/"))

    @property
    def redis_url(self) -> str:
        assert self.settings.redis_url is not None
        return self.settings.redis_url

    async def footprint(self) -> dict[str, int]:
        return await footprint(self.redis, self.settings.key_prefix)


@pytest.fixture
async def gate(
    env: dict[str, str], aiohttp_server: Callable[..., Awaitable[TestServer]]
) -> AsyncIterator[Gate]:
    settings = Settings.from_env(isolated_env(env, TASKGATE_SUBMIT_RATE="0"))
    server = await serve_gateway(aiohttp_server, settings)
    assert settings.redis_url is not None
    client = aioredis.Redis.from_url(settings.redis_url)
    await client.ping()
    async with aiohttp.ClientSession() as session:
        with blockbuster_ctx():
            yield Gate(server, settings, session, client)
    await client.aclose()


def user() -> str:
    return f"h-{uuid.uuid4().hex[:8]}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def forged(claims: dict[str, Any], *, key: str = SECRET, alg: str = "HS256") -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyJWT's advice on HS512 key length
        return jwt.encode(claims, key, algorithm=alg)


def alg_none_token(sub: str) -> str:
    import base64

    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part({'sub': sub, 'exp': 2**31})}."


def good_claims(**extra: Any) -> dict[str, Any]:
    import time

    return {"sub": user(), "exp": int(time.time()) + 600, **extra}


# ---- HTTP cases -------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpCase:
    """One request and the answer it must get (``code`` is ``error.code`` of the JSON body)."""

    id: str
    method: str
    path: str
    status: int
    code: str | None
    json_body: Any = None
    raw_body: bytes | None = None
    content_type: str | None = "application/json"
    token: Callable[[], str | None] = field(default=lambda: make_token(user()))
    headers: dict[str, str] = field(default_factory=dict)
    field_name: str | None = None  # error.details.field must be this


def submit(body: Any, status: int = 422, code: str = "invalid_input", **kw: Any) -> HttpCase:
    return HttpCase(
        id=kw.pop("id"), method="POST", path="/api/tasks", status=status, code=code,
        json_body=body, **kw,
    )  # fmt: skip


COUNT = {"task": "demo.count", "input": {"steps": 1, "delay": 0}}

# fmt: off
HTTP_CASES: list[HttpCase] = [
    # Tokens
    HttpCase("no-token", "GET", "/api/tasks", 401, "unauthorized", token=lambda: None),
    HttpCase("garbage-token", "GET", "/api/tasks", 401, "unauthorized", token=lambda: "abc.def"),
    HttpCase("alg-none", "GET", "/api/tasks", 401, "unauthorized",
             token=lambda: alg_none_token(user())),
    HttpCase("alg-hs512", "GET", "/api/tasks", 401, "unauthorized",
             token=lambda: forged(good_claims(), alg="HS512")),
    HttpCase("wrong-secret", "GET", "/api/tasks", 401, "unauthorized",
             token=lambda: forged(good_claims(), key="another-secret-" + "y" * 40)),
    HttpCase("expired-token", "GET", "/api/tasks", 401, "unauthorized",
             token=lambda: forged(good_claims(exp=1_000_000))),
    HttpCase("no-exp", "GET", "/api/tasks", 401, "unauthorized",
             token=lambda: forged({"sub": user()})),
    HttpCase("sub-not-string", "GET", "/api/tasks", 401, "unauthorized",
             token=lambda: forged(good_claims(sub=42))),
    # Only registered tasks
    submit({"task": "os.system", "input": {"command": "id"}}, code="unknown_task",
           id="task-os.system", field_name="task"),
    submit({"task": "builtins.eval", "input": {}}, code="unknown_task", id="task-builtins.eval"),
    submit({"task": "celery.backend_cleanup"}, code="unknown_task", id="task-celery-builtin"),
    submit({"task": "", "input": {}}, code="unknown_task", id="task-empty-name"),
    submit({"task": ["demo.count"]}, code="unknown_task", id="task-name-not-string"),
    submit({"input": {"steps": 1}}, id="task-missing", field_name="task"),
    # Options beyond the contract's, and the contract's timing options out of their range
    *[
        submit({**COUNT, opt: value}, id=f"option-{opt}", field_name=opt)
        for opt, value in [
            ("exchange", "amq.direct"), ("routing_key", "heavy"), ("eta", "2030-01-01T00:00:00"),
            ("countdown", -5), ("link", {"task": "os.system"}), ("link_error", []),
            ("serializer", "pickle"), ("headers", {"lang": "py"}), ("task_id", str(uuid.uuid4())),
            ("id", str(uuid.uuid4())), ("expires", "soon"), ("retries", 9),
        ]
    ],
    submit({"task": "demo.primes", "input": {"limit": 10}, "queue": "fast"},
           id="queue-not-allowed", field_name="queue"),
    submit({**COUNT, "queue": "celery"}, id="queue-unknown", field_name="queue"),
    submit({**COUNT, "priority": 10}, id="priority-10", field_name="priority"),
    submit({**COUNT, "priority": True}, id="priority-bool", field_name="priority"),
    submit({**COUNT, "idempotency_key": ""}, id="idempotency-key-empty"),
    submit({**COUNT, "callback_url": "http://169.254.169.254/latest/meta-data/"},
           id="callback-url-metadata-ip", field_name="callback_url"),
    submit({**COUNT, "callback_url": "file:///etc/passwd"}, id="callback-url-file",
           field_name="callback_url"),
    # Input against the task's schema
    submit({"task": "demo.count", "input": {"steps": "x"}}, id="input-wrong-type",
           field_name="input.steps"),
    submit({"task": "demo.count", "input": {"steps": 10001}}, id="input-above-max",
           field_name="input.steps"),
    submit({"task": "demo.count", "input": {"steps": 2**63 - 1}}, id="input-int64-max",
           field_name="input.steps"),
    submit({"task": "demo.count", "input": {"steps": 1, "shell": "rm"}}, id="input-unknown-field",
           field_name="input.shell"),
    submit({"task": "demo.count", "input": [1, 2]}, id="input-not-object", field_name="input"),
    submit({"task": "demo.count", "input": {"steps": {"$gt": 1}}}, id="input-object-for-int",
           field_name="input.steps"),
    # Bodies
    submit([COUNT], id="body-array", field_name="body"),
    submit(None, id="body-null", field_name="body"),
    HttpCase("malformed-json", "POST", "/api/tasks", 400, "bad_request", raw_body=b"{not json"),
    HttpCase("empty-body", "POST", "/api/tasks", 400, "bad_request", raw_body=b""),
    HttpCase("wrong-content-type", "POST", "/api/tasks", 400, "bad_request",
             raw_body=json.dumps(COUNT).encode(), content_type="text/plain"),
    HttpCase("form-content-type", "POST", "/api/tasks", 400, "bad_request",
             raw_body=b"task=demo.count", content_type="application/x-www-form-urlencoded"),
    HttpCase("nan", "POST", "/api/tasks", 400, "bad_request",
             raw_body=b'{"task": "demo.count", "input": {"delay": NaN}}'),
    HttpCase("infinity", "POST", "/api/tasks", 400, "bad_request",
             raw_body=b'{"task": "demo.count", "input": {"delay": Infinity}}'),
    HttpCase("float-overflow-1e999", "POST", "/api/tasks", 400, "bad_request",
             raw_body=b'{"task": "demo.count", "input": {"delay": 1e999}}'),
    HttpCase("huge-integer", "POST", "/api/tasks", 400, "bad_request",
             raw_body=b'{"task": "demo.count", "input": {"steps": 1' + b"0" * 400 + b"}}"),
    HttpCase("deep-nesting-5000", "POST", "/api/tasks", 400, "bad_request",
             raw_body=b"[" * 5000 + b"]" * 5000),
    HttpCase("deep-nesting-in-input", "POST", "/api/tasks", 422, "invalid_input",
             raw_body=b'{"task": "demo.count", "input": {"steps": ' + b"[" * 900 + b"]" * 900
             + b"}}"),
    HttpCase("invalid-utf8", "POST", "/api/tasks", 400, "bad_request",
             raw_body=b'{"task": "demo.\xff\xfe"}'),
    HttpCase("body-2MiB", "POST", "/api/tasks", 413, "too_large",
             raw_body=b'{"task": "demo.count", "pad": "' + b"a" * (2 * MIB) + b'"}'),
    # Reads and cancels
    HttpCase("limit-not-int", "GET", "/api/tasks?limit=abc", 400, "bad_request"),
    HttpCase("limit-zero", "GET", "/api/tasks?limit=0", 400, "bad_request"),
    HttpCase("limit-huge", "GET", "/api/tasks?limit=" + "9" * 50, 400, "bad_request"),
    HttpCase("status-bogus", "GET", "/api/tasks?status=RM_RF", 400, "bad_request"),
    HttpCase("get-not-uuid", "GET", "/api/tasks/not-a-uuid", 404, "not_found"),
    HttpCase("get-path-traversal", "GET", "/api/tasks/..%2F..%2Fetc%2Fpasswd", 404, "not_found"),
    HttpCase("get-unknown-uuid", "GET", f"/api/tasks/{uuid.uuid4()}", 404, "not_found"),
    HttpCase("cancel-unknown", "DELETE", f"/api/tasks/{uuid.uuid4()}", 404, "not_found"),
    HttpCase("method-not-allowed", "PUT", "/api/tasks", 405, "method_not_allowed",
             raw_body=b"{}"),
    HttpCase("unknown-path", "GET", "/api/nothing-here", 404, "not_found"),
    HttpCase("foreign-origin", "POST", "/api/tasks", 403, "forbidden_origin",
             json_body=COUNT, headers={"Origin": "https://evil.example"}),
]
# fmt: on


@pytest.mark.parametrize("case", HTTP_CASES, ids=[c.id for c in HTTP_CASES])
async def test_http_hostile(gate: Gate, case: HttpCase) -> None:
    before = await gate.footprint()
    headers = dict(case.headers)
    token = case.token()
    if token is not None:
        headers.update(bearer(token))
    if case.content_type is not None:
        headers["Content-Type"] = case.content_type
    data = case.raw_body if case.raw_body is not None else json.dumps(case.json_body).encode()
    body = data if case.method in ("POST", "PUT") else None
    async with gate.session.request(
        case.method, gate.url + case.path.lstrip("/"), data=body, headers=headers,
        timeout=aiohttp.ClientTimeout(total=20),
    ) as resp:  # fmt: skip
        assert resp.status == case.status, await resp.text()
        assert resp.content_type == "application/json"
        answer = await resp.json()
        if case.status == 401:
            assert resp.headers.get("WWW-Authenticate") == "Bearer"
    assert set(answer) == {"error"}
    assert set(answer["error"]) <= {"code", "message", "details"}
    assert answer["error"]["code"] == case.code
    assert isinstance(answer["error"]["message"], str) and answer["error"]["message"]
    assert "Traceback" not in json.dumps(answer)
    if case.field_name is not None:
        assert answer["error"]["details"]["field"] == case.field_name
    assert await gate.footprint() == before
    async with gate.session.get(gate.url + "healthz") as resp:
        assert resp.status == 200


async def test_auth_messages_say_why(gate: Gate) -> None:
    async def message(token: str | None) -> str:
        headers = bearer(token) if token else {}
        async with gate.session.get(gate.url + "api/tasks", headers=headers) as resp:
            assert resp.status == 401
            msg: str = (await resp.json())["error"]["message"]
            return msg

    assert await message(None) == "missing token"
    assert "algorithm 'none'" in await message(alg_none_token(user()))
    assert "algorithm 'HS512'" in await message(forged(good_claims(), alg="HS512"))
    assert await message(forged(good_claims(exp=1_000_000))) == "token expired"
    assert await message(forged({"sub": user()})) == "token lacks the 'exp' claim"
    assert "signature" in await message(forged(good_claims(), key="k" * 40))


# ---- raw HTTP: chunked, partial, slow, garbage ------------------------------------------------


async def raw_exchange(gate: Gate, head: bytes, chunks: list[bytes], pause: float = 0.0) -> bytes:
    """Send ``head`` then ``chunks`` on a fresh connection; return what the server answered."""
    assert gate.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", gate.server.port)
    try:
        writer.write(head)
        for chunk in chunks:
            try:
                writer.write(chunk)
                await writer.drain()
            except ConnectionError:
                break  # the server answered and closed while we were still sending
            if pause:
                await asyncio.sleep(pause)
        async with asyncio.timeout(15):
            return await reader.read(65536)
    finally:
        writer.close()


def request_head(gate: Gate, extra: str) -> bytes:
    token = make_token(user())
    return (
        f"POST /api/tasks HTTP/1.1\r\nHost: 127.0.0.1:{gate.server.port}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n{extra}\r\n"
    ).encode()


def chunked(data: bytes, size: int = 64 * 1024) -> list[bytes]:
    parts = [data[i : i + size] for i in range(0, len(data), size)]
    return [b"%x\r\n%s\r\n" % (len(p), p) for p in parts] + [b"0\r\n\r\n"]


async def test_chunked_body_over_the_cap_is_413(gate: Gate) -> None:
    before = await gate.footprint()
    body = b'{"task": "demo.count", "pad": "' + b"a" * (2 * MIB) + b'"}'
    answer = await raw_exchange(gate, request_head(gate, "Transfer-Encoding: chunked\r\n"),
                                chunked(body))  # fmt: skip
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"too_large"' in answer
    assert await gate.footprint() == before


async def test_chunked_body_under_the_cap_is_accepted(gate: Gate) -> None:
    body = json.dumps(COUNT).encode()
    answer = await raw_exchange(gate, request_head(gate, "Transfer-Encoding: chunked\r\n"),
                                chunked(body, 7))  # fmt: skip
    assert answer.startswith(b"HTTP/1.1 202"), answer[:200]


async def test_content_length_over_the_cap_is_413_before_reading(gate: Gate) -> None:
    answer = await raw_exchange(gate, request_head(gate, f"Content-Length: {50 * MIB}\r\n"), [])
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


async def test_partial_body_then_hang_up_changes_nothing(gate: Gate) -> None:
    before = await gate.footprint()
    assert gate.server.port is not None
    _, writer = await asyncio.open_connection("127.0.0.1", gate.server.port)
    writer.write(request_head(gate, "Content-Length: 100\r\n") + b'{"task": "demo.co')
    await writer.drain()
    writer.close()
    await asyncio.sleep(0.2)
    async with gate.session.get(gate.url + "healthz") as resp:
        assert resp.status == 200
    assert await gate.footprint() == before


async def test_slow_body_does_not_hold_up_others(gate: Gate) -> None:
    """A client trickling its body byte by byte: others are served meanwhile; when it is done
    its request is judged like any other."""
    body = json.dumps({"task": "os.system", "input": {}}).encode()
    slow = asyncio.create_task(
        raw_exchange(gate, request_head(gate, f"Content-Length: {len(body)}\r\n"),
                     [body[i : i + 1] for i in range(len(body))], pause=0.02)
    )  # fmt: skip
    for _ in range(5):
        async with gate.session.get(gate.url + "healthz") as resp:
            assert resp.status == 200
    answer = await slow
    assert answer.startswith(b"HTTP/1.1 422"), answer[:200]


async def test_body_that_stops_coming_is_408(gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    """Half a body, then nothing (the connection kept open): 408 once the body timeout passes,
    and nothing accepted. A body that arrived with its headers never waits on that clock."""
    monkeypatch.setattr(http_api, "BODY_TIMEOUT_S", 0.5)
    before = await gate.footprint()
    assert gate.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", gate.server.port)
    try:
        writer.write(request_head(gate, "Content-Length: 100\r\n") + b'{"task": "demo.co')
        await writer.drain()
        async with asyncio.timeout(10):
            answer = await reader.read(65536)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"request_timeout"' in answer
    assert await gate.footprint() == before
    whole = json.dumps(COUNT).encode()
    answer = await raw_exchange(
        gate, request_head(gate, f"Content-Length: {len(whole)}\r\n") + whole, []
    )
    assert answer.startswith(b"HTTP/1.1 202"), answer[:200]


async def test_garbage_instead_of_http_gets_400(gate: Gate) -> None:
    tls_hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n"
    answer = await raw_exchange(gate, tls_hello, [])
    assert answer.split(b"\r\n")[0].split(b" ")[1] == b"400", answer[:200]
    async with gate.session.get(gate.url + "healthz") as resp:
        assert resp.status == 200


async def test_huge_header_is_refused(gate: Gate) -> None:
    head = request_head(gate, f"X-Pad: {'a' * 100_000}\r\nContent-Length: 2\r\n")
    answer = await raw_exchange(gate, head, [b"{}"])
    assert answer.split(b" ")[1] in (b"400", b"431"), answer[:200]


# ---- Socket.IO with python-socketio's client --------------------------------------------------


async def refused_connect(gate: Gate, auth: Any) -> str:
    """Connect with ``auth``; return the message of the ``connect_error`` the server sent."""
    client = socketio.AsyncClient(reconnection=False)
    errors: list[Any] = []

    @client.on("connect_error")
    async def on_error(data: Any = None) -> None:
        errors.append(data)

    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(gate.url, auth=auth, transports=["websocket"], wait_timeout=10)
    await client.disconnect()
    assert errors, "no connect_error"
    message: str = errors[0]["message"]
    return message


@pytest.mark.parametrize(
    "auth, says",
    [
        (None, "missing token"),
        ({"token": ""}, "missing token"),
        ({"token": 42}, "missing token"),
        ({"token": "x.y.z"}, "invalid token"),
        ("not-an-object", "missing token"),
        (lambda: {"token": alg_none_token(user())}, "algorithm 'none'"),
        (lambda: {"token": forged(good_claims(exp=1_000_000))}, "token expired"),
        (lambda: {"token": forged(good_claims(), key="k" * 40)}, "bad signature"),
    ],
    ids=["no-auth", "empty-token", "token-not-string", "garbage-token", "auth-not-object",
         "alg-none", "expired", "wrong-secret"],
)  # fmt: skip
async def test_socket_connect_refused_says_why(gate: Gate, auth: Any, says: str) -> None:
    message = await refused_connect(gate, auth() if callable(auth) else auth)
    assert says in message


@dataclass(frozen=True)
class EventCase:
    id: str
    event: str
    data: Any
    code: str


EVENT_CASES = [
    EventCase("submit-os.system", "submit", {"task": "os.system", "input": {}}, "unknown_task"),
    EventCase("submit-empty-name", "submit", {"task": ""}, "unknown_task"),
    EventCase("submit-eta", "submit", {**COUNT, "eta": "2030-01-01"}, "invalid_input"),
    EventCase("submit-task-id", "submit", {**COUNT, "task_id": str(uuid.uuid4())},
              "invalid_input"),
    EventCase("submit-not-object", "submit", "rm -rf /", "invalid_input"),
    EventCase("submit-bad-input", "submit", {"task": "demo.count", "input": {"steps": -1}},
              "invalid_input"),
    EventCase("cancel-unknown", "cancel", {"task_id": str(uuid.uuid4())}, "not_found"),
    EventCase("cancel-not-object", "cancel", ["x"], "not_found"),
    EventCase("watch-not-object", "watch", "all", "invalid_input"),
    EventCase("watch-seq-not-int", "watch", {"tasks": {str(uuid.uuid4()): "x"}}, "invalid_input"),
]  # fmt: skip


@pytest.mark.parametrize("case", EVENT_CASES, ids=[c.id for c in EVENT_CASES])
async def test_socket_event_hostile(gate: Gate, case: EventCase) -> None:
    before = await gate.footprint()
    client = await SocketClient(gate.url, make_token(user())).connect()
    try:
        ack = await client.call(case.event, case.data)
        assert set(ack) == {"error"} and ack["error"]["code"] == case.code, ack
        assert client.sio.connected
    finally:
        await client.close()
    assert await gate.footprint() == before


# ---- Socket.IO, raw frames over aiohttp's websocket client -------------------------------------


@dataclass(frozen=True)
class FrameCase:
    """Frames sent on a raw websocket (after CONNECT when ``connect``); the connection must be
    closed by the server."""

    id: str
    frames: list[str | bytes]
    connect: bool = True
    close_code: int | None = None


FRAME_CASES = [
    FrameCase("frame-2MiB", ["42" + json.dumps(["submit", {"pad": "a" * (2 * MIB)}])],
              close_code=1009),
    FrameCase("packet-before-connect", ['42["submit",{"task":"demo.count"}]'], connect=False),
    FrameCase("malformed-packet-json", ['42["submit",{not json'], connect=True),
    FrameCase("malformed-packet-type", ["9hello"]),
    FrameCase("empty-socketio-packet", ["4"]),
    FrameCase("engineio-garbage", ["x"]),
    FrameCase("unknown-namespace-connect", ["40/admin,{}"], connect=False),
    FrameCase("unknown-namespace-event", ['42/admin,["submit",{}]']),
    FrameCase("second-connect", ["40" + json.dumps({"token": "x"})]),
    FrameCase("binary-event-attachments", ['451-["submit",{"_placeholder":true,"num":0}]']),
    FrameCase("binary-attachment-count-huge",
              ['499999999999-["submit",{"_placeholder":true,"num":0}]']),
    FrameCase("binary-frame", [b"\x04" + b"\x00" * 1024]),
    FrameCase("huge-integer-in-event", ['420["submit",{"task":"demo.count","input":{"steps":1'
                                        + "0" * 400 + "}}]"]),
    FrameCase("nan-in-event", ['420["submit",{"task":"demo.count","input":{"delay":NaN}}]']),
    FrameCase("deep-nesting-in-event", ["420" + "[" * 5000 + "]" * 5000]),
    FrameCase("flood-500-events", ['42["watch",{"tasks":{}}]'] * 500),
]  # fmt: skip


@pytest.mark.parametrize("case", FRAME_CASES, ids=[c.id for c in FRAME_CASES])
async def test_socket_frame_hostile(gate: Gate, case: FrameCase) -> None:
    before = await gate.footprint()
    bystander = await SocketClient(gate.url, make_token(user())).connect()
    raw = await RawSocket.open(
        gate.url, session=gate.session, token=make_token(user()) if case.connect else None
    )
    try:
        await raw.send_all(case.frames)
        assert await raw.closed_within(10), "the server kept the connection open"
        if case.close_code is not None:
            assert raw.ws.close_code == case.close_code
        # Nothing else was closed: the bystander still gets answers.
        assert bystander.sio.connected
        assert await bystander.call("watch", {"tasks": {}}) == {"ok": True, "sent": 0}
    finally:
        await raw.close()
        await bystander.close()
    assert await gate.footprint() == before
    async with gate.session.get(gate.url + "healthz") as resp:
        assert resp.status == 200


async def test_websocket_from_foreign_origin_is_refused(gate: Gate) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await RawSocket.open(gate.url, session=gate.session, origin="https://evil.example")
    assert info.value.status == 400


async def test_websocket_from_same_origin_is_accepted(gate: Gate) -> None:
    assert gate.server.port is not None
    raw = await RawSocket.open(
        gate.url,
        session=gate.session,
        token=make_token(user()),
        origin=f"http://127.0.0.1:{gate.server.port}",
    )
    await raw.ws.send_str('420["watch",{"tasks":{}}]')
    assert await raw.text() == '430[{"ok":true,"sent":0}]'
    await raw.close()


async def test_long_poll_handshake_without_origin_is_not_a_500(gate: Gate) -> None:
    """python-engineio asks the origin policy about the CORS headers of a long-poll answer even
    when there is no Origin; that must not fail (it once answered 500)."""
    url = gate.url + "socket.io/?EIO=4&transport=polling"
    async with gate.session.get(url) as resp:
        assert resp.status < 500
        assert "Access-Control-Allow-Origin" not in resp.headers
    async with gate.session.get(url, headers={"Origin": "https://evil.example"}) as resp:
        assert resp.status == 400
