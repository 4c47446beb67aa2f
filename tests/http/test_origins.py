"""Origins (issue 4): CORS and the Socket.IO handshake allow only configured origins; same
origin only by default."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from tests.support import (
    COUNT,
    ServerFactory,
    auth,
    gateway_apart,
)


def user() -> str:
    return f"s-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def cors_gate(
    env: dict[str, str], aiohttp_server: ServerFactory
) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    _, url = await gateway_apart(
        aiohttp_server, env, CORS_ALLOWED_ORIGINS="https://app.example, https://admin.example"
    )
    async with aiohttp.ClientSession() as session:
        yield url, session


async def test_cors_allows_only_configured_origins(
    cors_gate: tuple[str, aiohttp.ClientSession],
) -> None:
    url, session = cors_gate
    preflight = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    async with session.options(url + "api/tasks", headers=preflight) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]
        assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
    async with session.options(
        url + "api/tasks", headers={**preflight, "Origin": "https://evil.example"}
    ) as resp:
        assert resp.status == 403
        assert "Access-Control-Allow-Origin" not in resp.headers
    headers = {"Origin": "https://admin.example", **auth(user())}
    async with session.get(url + "api/tasks", headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == "https://admin.example"
    # errors carry the CORS headers too, so the page can read them
    async with session.get(url + "api/tasks", headers={"Origin": "https://app.example"}) as resp:
        assert resp.status == 401
        assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
    before = time.time()
    async with session.post(
        url + "api/tasks", json=COUNT, headers={"Origin": "https://evil.example", **auth(user())}
    ) as resp:
        assert resp.status == 403 and (await resp.json())["error"]["code"] == "forbidden_origin"
    assert time.time() - before < 5


async def test_socket_handshake_honours_configured_origins(
    cors_gate: tuple[str, aiohttp.ClientSession],
) -> None:
    url, session = cors_gate
    ws_url = url + "socket.io/?EIO=4&transport=websocket"
    ws = await session.ws_connect(ws_url, headers={"Origin": "https://app.example"})
    assert (await ws.receive(timeout=5)).data.startswith("0{")
    await ws.close()
    for origin in ("https://evil.example", url.rstrip("/")):  # same origin is not listed here
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await session.ws_connect(ws_url, headers={"Origin": origin})


async def test_default_is_same_origin_only(http: TestClient) -> None:
    own = f"http://127.0.0.1:{http.server.port}"
    resp = await http.get("/api/tasks", headers={"Origin": own, **auth(user())})
    assert resp.status == 200
    resp = await http.get("/api/tasks", headers={"Origin": "http://localhost:1", **auth(user())})
    assert resp.status == 403
