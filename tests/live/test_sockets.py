"""Socket.IO as a client meets it: snapshots on connect, ``watch`` catching up, the
heartbeat, and plain (uncompressed) websocket frames."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from aiohttp.test_utils import TestClient, TestServer

from shared.settings import Settings
from tests.support import SocketClient, auth, make_token, serve_gateway

Connect = Callable[[str], Awaitable[SocketClient]]


def user() -> str:
    return f"u-{uuid.uuid4().hex[:8]}"


async def test_connect_sends_live_snapshots_and_watch_catches_up(
    http: TestClient, sockets: Connect
) -> None:
    alice = user()
    resp = await http.post(
        "/api/tasks",
        json={"task": "demo.count", "input": {"steps": 2, "delay": 0}},
        headers=auth(alice),
    )
    task_id = (await resp.json())["task_id"]
    first = await sockets(alice)
    await first.wait_terminal(task_id)
    # A client that connects later gets the snapshot of the task that just ended.
    late = await sockets(alice)
    final = await late.wait_terminal(task_id)
    assert final["status"] == "COMPLETED"
    # watch with an old seq resends the current snapshot; with the current seq, nothing.
    ack = await late.call("watch", {"tasks": {task_id: 1}})
    assert ack == {"ok": True, "sent": 1}
    assert await late.call("watch", {"tasks": {task_id: final["seq"]}}) == {"ok": True, "sent": 0}


async def test_heartbeat_event_carries_server_time(
    env: dict[str, str], aiohttp_server: Callable[..., Awaitable[TestServer]]
) -> None:
    """A gateway of its own beating every 0.5 s (the default is 15 s): beats keep coming, each
    with the server's time."""
    settings = Settings.from_env({**env, "TASKGATE_HEARTBEAT_S": "0.5"})
    assert settings.heartbeat_s == 0.5
    server = await serve_gateway(aiohttp_server, settings)
    client = await SocketClient(str(server.make_url("")), make_token(user())).connect()
    try:
        await client.wait_for(lambda: len(client.heartbeats) >= 2, timeout=10)
        assert isinstance(client.heartbeats[0]["ts"], float)
        assert client.heartbeats[1]["ts"] > client.heartbeats[0]["ts"]
    finally:
        await client.close()


async def test_websocket_frames_are_not_compressed(http: TestClient) -> None:
    """permessage-deflate is declined (see docs/PERFORMANCE.md): a client offering it gets plain
    frames, and the Engine.IO handshake still works."""
    ws = await http.session.ws_connect(
        http.make_url("/socket.io/?EIO=4&transport=websocket"), compress=15
    )
    try:
        assert ws.compress == 0
        opened = await ws.receive_str(timeout=5)
        assert opened.startswith("0{")  # Engine.IO OPEN
    finally:
        await ws.close()
