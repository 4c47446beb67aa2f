"""Sockets an attacker cannot hold or flood: real gateways, python-socketio's client for the
well-behaved side and raw websockets (aiohttp's ``ws_connect``) for the hostile one.

- a connection that never completes a Socket.IO CONNECT is closed by the server after
  ``TASKGATE_SOCKET_CONNECT_TIMEOUT_S`` (also after a refused CONNECT, or a DISCONNECT from ``/``);
- every frame counts against ``TASKGATE_SOCKET_EVENT_RATE``: an Engine.IO ping/pong/noop/upgrade
  flood, or a websocket ping flood, closes the connection while other clients keep working;
- an oversized frame closes with 1009;
- an unknown event with an ack id gets an ``unknown_event`` error ack;
- a token whose ``sub`` is not valid UTF-8 text (a lone surrogate) is 401 / ``connect_error``;
- the guard's startup check names a missing python-socketio/python-engineio internal.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import jwt
import pytest
import socketio
from aiohttp.test_utils import TestServer
from blockbuster import blockbuster_ctx
from engineio.async_drivers.aiohttp import WebSocket as EngineIOWebSocket

from gateway.auth import issue_token
from gateway.sockets import guard as guard_module
from gateway.sockets.guard import SocketGuard, UnsupportedSocketIO, check_internals
from shared.errors import ConfigError
from shared.settings import Secret, Settings
from tests.support import SECRET, RawSocket, SocketClient, fresh, make_token, serve_gateway

MIB = 1024 * 1024
QUICK_TIMEOUT_S = 1.5
# How late a close may come after its deadline on a loaded machine (2 CPUs shared).
MARGIN_S = 3.0


def user() -> str:
    return f"g-{uuid.uuid4().hex[:8]}"


def url_of(server: TestServer) -> str:
    return str(server.make_url("/"))


@pytest.fixture
async def quick(
    env: dict[str, str], aiohttp_server: Callable[..., Awaitable[TestServer]]
) -> AsyncIterator[TestServer]:
    """A gateway (no worker behind it) whose connections must CONNECT within 1.5 s."""
    settings = fresh(env, TASKGATE_SOCKET_CONNECT_TIMEOUT_S=str(QUICK_TIMEOUT_S))
    server = await serve_gateway(aiohttp_server, settings)
    with blockbuster_ctx():
        yield server


# ---- connections that never CONNECT -----------------------------------------------------------


async def assert_closed_at_deadline(raw: RawSocket) -> None:
    """Still open shortly before the deadline, closed soon after it."""
    assert not await raw.closed_within(QUICK_TIMEOUT_S / 2), "closed before its deadline"
    assert await raw.closed_within(QUICK_TIMEOUT_S + MARGIN_S), "held past the CONNECT deadline"
    assert time.monotonic() - raw.opened_at >= QUICK_TIMEOUT_S / 2


async def test_a_connection_that_never_connects_is_closed(quick: TestServer) -> None:
    url = url_of(quick)
    bystander = await SocketClient(url, make_token(user())).connect()
    raw = await RawSocket.open(url)
    try:
        await assert_closed_at_deadline(raw)
        # The deadline is for connections without CONNECT only: the bystander, connected for
        # longer than it, still gets answers.
        assert bystander.sio.connected
        assert await bystander.call("watch", {"tasks": {}}) == {"ok": True, "sent": 0}
    finally:
        await raw.close()
        await bystander.close()


async def test_many_idle_connections_are_all_closed(quick: TestServer) -> None:
    """The reported attack in small: connections held open without CONNECT all go."""
    url = url_of(quick)
    raws = await asyncio.gather(*(RawSocket.open(url) for _ in range(20)))
    try:
        closed = await asyncio.gather(
            *(raw.closed_within(QUICK_TIMEOUT_S + MARGIN_S) for raw in raws)
        )
        assert all(closed), f"{closed.count(False)} of {len(raws)} connections were held"
    finally:
        await asyncio.gather(*(raw.close() for raw in raws))


async def test_a_refused_connect_does_not_hold_the_connection(quick: TestServer) -> None:
    raw = await RawSocket.open(url_of(quick))
    try:
        answer = await raw.connect("not-a-token")
        assert answer.startswith("44"), answer  # CONNECT_ERROR
        await assert_closed_at_deadline(raw)
    finally:
        await raw.close()


async def test_a_disconnect_from_the_namespace_restarts_the_deadline(quick: TestServer) -> None:
    raw = await RawSocket.open(url_of(quick))
    try:
        answer = await raw.connect(make_token(user()))
        assert answer.startswith("40{"), answer
        # Connected: the deadline is off, even well past it.
        assert not await raw.closed_within(QUICK_TIMEOUT_S + 0.5)
        await raw.ws.send_str("41")  # Socket.IO DISCONNECT from "/", Engine.IO kept open
        raw.opened_at = time.monotonic()
        await assert_closed_at_deadline(raw)
    finally:
        await raw.close()


def test_the_connect_timeout_is_a_setting(env: dict[str, str]) -> None:
    assert Settings.from_env(env).socket_connect_timeout_s == 5.0
    read = Settings.from_env({**env, "TASKGATE_SOCKET_CONNECT_TIMEOUT_S": "2.5"})
    assert read.socket_connect_timeout_s == 2.5
    with pytest.raises(ConfigError, match="TASKGATE_SOCKET_CONNECT_TIMEOUT_S"):
        Settings.from_env({**env, "TASKGATE_SOCKET_CONNECT_TIMEOUT_S": "-1"})


# ---- floods of Engine.IO and websocket frames -------------------------------------------------

# Engine.IO packets that python-socketio never sees: ping, pong, upgrade, noop.
FLOODS = {"engineio-ping": "2", "engineio-pong": "3", "engineio-upgrade": "5", "engineio-noop": "6"}


@pytest.fixture
async def untimed(
    env: dict[str, str], aiohttp_server: Callable[..., Awaitable[TestServer]]
) -> AsyncIterator[TestServer]:
    """A gateway (no worker behind it) without the CONNECT deadline: a connection it closes
    before CONNECT was closed for its frames."""
    settings = fresh(env, TASKGATE_SOCKET_CONNECT_TIMEOUT_S="0")
    server = await serve_gateway(aiohttp_server, settings)
    with blockbuster_ctx():
        yield server


@pytest.mark.parametrize("connect", [True, False], ids=["connected", "before-connect"])
@pytest.mark.parametrize("frame", list(FLOODS.values()), ids=list(FLOODS))
async def test_an_engineio_flood_closes_the_connection(
    untimed: TestServer, frame: str, connect: bool
) -> None:
    url = url_of(untimed)
    bystander = await SocketClient(url, make_token(user())).connect()
    raw = await RawSocket.open(url)
    try:
        if connect:
            assert (await raw.connect(make_token(user()))).startswith("40{")
        # 500 frames at once: far above the default 20 per second (burst 40).
        await raw.send_all([frame] * 500)
        assert await raw.closed_within(10), "the flood was not stopped"
        assert bystander.sio.connected
        assert await bystander.call("watch", {"tasks": {}}) == {"ok": True, "sent": 0}
    finally:
        await raw.close()
        await bystander.close()


async def test_a_websocket_ping_flood_closes_the_connection(
    gateway: TestServer, sockets: Callable[[str], Awaitable[SocketClient]]
) -> None:
    bystander = await sockets(user())
    raw = await RawSocket.open(url_of(gateway))
    try:
        assert (await raw.connect(make_token(user()))).startswith("40{")
        for _ in range(500):
            try:
                await raw.ws.ping(b"x")
            except ConnectionError:
                break
        assert await raw.closed_within(10), "the websocket ping flood was not stopped"
        assert await bystander.call("watch", {"tasks": {}}) == {"ok": True, "sent": 0}
    finally:
        await raw.close()


async def test_frames_within_the_rate_keep_the_connection(gateway: TestServer) -> None:
    """A websocket ping is still answered, and a client within the rate stays connected."""
    raw = await RawSocket.open(url_of(gateway), autoping=False)  # so that the client sees pongs
    try:
        assert (await raw.connect(make_token(user()))).startswith("40{")
        await raw.ws.ping(b"probe")
        msg = await raw.ws.receive(timeout=5)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.PONG, b"probe")
        for _ in range(10):
            await raw.ws.send_str("6")  # noop
            await raw.ws.send_str('420["watch",{"tasks":{}}]')
            assert await raw.text() == '430[{"ok":true,"sent":0}]'
    finally:
        await raw.close()


# ---- oversized frames -------------------------------------------------------------------------


async def test_an_oversized_frame_closes_with_1009(gateway: TestServer, settings: Settings) -> None:
    raw = await RawSocket.open(url_of(gateway))
    try:
        assert (await raw.connect(make_token(user()))).startswith("40{")
        pad = "a" * (settings.max_body_bytes + 1)
        await raw.ws.send_str("42" + json.dumps(["submit", {"pad": pad}]))
        assert await raw.closed_within(10)
        assert raw.ws.close_code == 1009  # aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    finally:
        await raw.close()


# ---- unknown events ---------------------------------------------------------------------------


async def test_an_unknown_event_with_an_ack_gets_an_error(
    gateway: TestServer, sockets: Callable[[str], Awaitable[SocketClient]]
) -> None:
    client = await sockets(user())
    ack = await client.call("rm-rf", {"x": 1}, timeout=5)
    assert set(ack) == {"error"}, ack
    assert ack["error"]["code"] == "unknown_event"
    assert "rm-rf" in ack["error"]["message"]
    # Without an ack id nothing is answered, and the connection stays.
    await client.sio.emit("rm-rf", {"x": 1})
    assert client.sio.connected
    assert await client.call("watch", {"tasks": {}}) == {"ok": True, "sent": 0}


async def test_an_unknown_event_over_a_raw_socket_gets_an_error_ack(gateway: TestServer) -> None:
    raw = await RawSocket.open(url_of(gateway))
    try:
        assert (await raw.connect(make_token(user()))).startswith("40{")
        await raw.ws.send_str('427["nope",1]')
        answer = await raw.text()
        assert answer.startswith("437["), answer
        assert json.loads(answer[3:])[0]["error"]["code"] == "unknown_event"
    finally:
        await raw.close()


# ---- tokens whose sub is not text --------------------------------------------------------------


def token_with_sub(sub_json: str) -> str:
    """A signed token whose payload is this JSON text, with ``sub`` spelled as ``sub_json``."""
    exp = int(time.time()) + 600
    payload = f'{{"sub":{sub_json},"exp":{exp}}}'.encode()
    return jwt.api_jws.encode(payload, SECRET, algorithm="HS256", headers={"typ": "JWT"})


BAD_SUBS = {
    "lone-high-surrogate": '"\\ud800"',
    "lone-low-surrogate": '"user-\\udfff"',
    "reversed-pair": '"\\ude00\\ud83d"',
}


@pytest.mark.parametrize("sub_json", list(BAD_SUBS.values()), ids=list(BAD_SUBS))
async def test_a_sub_that_is_not_text_is_refused(
    gateway: TestServer, http: Any, sub_json: str
) -> None:
    token = token_with_sub(sub_json)
    resp = await http.get("/api/tasks", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 401
    body = await resp.json()
    assert body["error"]["code"] == "unauthorized"
    assert "UTF-8" in body["error"]["message"]
    # Also at submit, where the user id reaches Redis keys.
    resp = await http.post(
        "/api/tasks",
        json={"task": "demo.count", "input": {"steps": 1}},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert resp.status == 401

    client = socketio.AsyncClient(reconnection=False)
    errors: list[Any] = []
    client.on("connect_error", errors.append)
    try:
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(
                url_of(gateway), auth={"token": token}, transports=["websocket"], wait_timeout=5
            )
        assert errors and "UTF-8" in str(errors[0]), errors
    finally:
        await client.disconnect()


async def test_the_surrogate_token_minted_by_issue_token_is_refused(http: Any) -> None:
    token = issue_token(Secret(SECRET), "\ud800")
    resp = await http.get("/api/tasks", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 401


async def test_a_too_long_sub_is_refused(http: Any) -> None:
    token = issue_token(Secret(SECRET), "u" * 129)
    resp = await http.get("/api/tasks", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 401


async def test_a_sub_beyond_ascii_that_is_text_is_accepted(gateway: TestServer, http: Any) -> None:
    """A surrogate pair escaped in JSON is one character: valid text, a valid user id."""
    token = token_with_sub('"zo\\u00eb-\\ud83d\\ude00"')
    resp = await http.get("/api/tasks", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200, await resp.text()
    client = await SocketClient(url_of(gateway), token).connect()
    await client.close()


# ---- the startup check of python-socketio's and python-engineio's internals -------------------


def test_the_startup_check_passes_on_the_installed_versions() -> None:
    check_internals()
    check_internals(socketio.AsyncServer(async_mode="aiohttp"))


@pytest.mark.parametrize(
    ("owner", "name"),
    [
        (socketio.AsyncServer, "_handle_eio_message"),
        (socketio.AsyncServer, "_handle_eio_connect"),
        (socketio.AsyncServer, "_handle_eio_disconnect"),
        (EngineIOWebSocket, "wait"),
    ],
)
def test_the_startup_check_names_a_missing_method(
    monkeypatch: pytest.MonkeyPatch, owner: type, name: str
) -> None:
    monkeypatch.delattr(owner, name)
    with pytest.raises(UnsupportedSocketIO, match=name) as info:
        check_internals()
    assert guard_module.SUPPORTED in str(info.value)


def test_the_guard_refuses_a_server_without_its_driver_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sio = socketio.AsyncServer(async_mode="aiohttp")
    monkeypatch.delattr(sio.eio, "_async")
    with pytest.raises(UnsupportedSocketIO, match="_async"):
        SocketGuard(sio, 20.0)


# ---- events named like the connect and disconnect handlers -----------------------------------


RESERVED_FRAMES = {
    "disconnect": '42["disconnect"]',
    "disconnect-with-ack": '427["disconnect"]',
    "disconnect-escaped": '42[ "dis\\u0063onnect",{}]',
    "connect": '42["connect",{},{"token":"x"}]',
}


@pytest.mark.parametrize("frame", list(RESERVED_FRAMES.values()), ids=list(RESERVED_FRAMES))
async def test_an_event_named_like_a_handler_closes_the_connection(
    quick: TestServer, frame: str
) -> None:
    """python-socketio would hand ``42["disconnect"]`` to the disconnect handler, which stops
    the token's expiry timer: the connection would outlive its token. It is closed instead."""
    raw = await RawSocket.open(url_of(quick))
    try:
        assert (await raw.connect(make_token(user()))).startswith("40{")
        await raw.ws.send_str(frame)
        assert await raw.closed_within(QUICK_TIMEOUT_S), "a reserved event name was dispatched"
    finally:
        await raw.close()
