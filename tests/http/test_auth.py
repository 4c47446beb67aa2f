"""Tokens against real parts (issue 4): audience and issuer, expiry on sockets, the secret at
start and in the logs."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
import uuid

import aiohttp
import pytest
import socketio

from gateway.app import create_app
from gateway.auth import TokenRules, issue_token
from shared.errors import ConfigError
from shared.settings import Secret, Settings
from tests.support import (
    COUNT,
    ROOT,
    SECRET,
    ServerFactory,
    SocketClient,
    gateway_apart,
    make_token,
)


def user() -> str:
    return f"s-{uuid.uuid4().hex[:8]}"


async def test_audience_and_issuer_are_checked_when_configured(
    env: dict[str, str], aiohttp_server: ServerFactory
) -> None:
    settings, url = await gateway_apart(
        aiohttp_server, env, TASKGATE_TOKEN_AUDIENCE="taskgate-api", TASKGATE_TOKEN_ISSUER="idp"
    )
    secret = Secret(SECRET)
    cases = [
        (issue_token(secret, "a"), 401, "token lacks the 'aud' claim"),
        (issue_token(secret, "a", rules=TokenRules("other", "idp")), 401,
         "token is for another audience"),
        (issue_token(secret, "a", rules=TokenRules("taskgate-api", "evil")), 401,
         "token is from another issuer"),
        (issue_token(secret, "a", rules=TokenRules("taskgate-api", None)), 401,
         "token lacks the 'iss' claim"),
        (issue_token(secret, "a", rules=TokenRules.from_settings(settings)), 200, None),
    ]  # fmt: skip
    async with aiohttp.ClientSession() as session:
        for token, status, message in cases:
            async with session.get(url + "api/tasks", headers=bearer(token)) as resp:
                assert resp.status == status
                if message:
                    assert (await resp.json())["error"]["message"] == message
    good = issue_token(secret, "a", rules=TokenRules.from_settings(settings))
    client = await SocketClient(url, good).connect()
    await client.close()
    refused = socketio.AsyncClient(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await refused.connect(url, auth={"token": cases[1][0]}, transports=["websocket"])
    await refused.disconnect()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_socket_is_disconnected_when_its_token_expires(
    env: dict[str, str], aiohttp_server: ServerFactory
) -> None:
    _, url = await gateway_apart(aiohttp_server, env)
    token = issue_token(Secret(SECRET), user(), ttl_s=1)
    expires_at = time.time() + 1
    client = await SocketClient(url, token).connect()
    gone = asyncio.Event()
    client.sio.on("disconnect", lambda *_: gone.set())
    async with asyncio.timeout(30):
        await gone.wait()
    # Within a minute of expiry (here: expiry plus the 5 s leeway).
    assert time.time() - expires_at < 60
    assert not client.sio.connected


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli.commands", *args], env=env, cwd=ROOT,
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    "secret, says",
    [
        (None, "taskgate: TASKGATE_SECRET: not set"),
        ("short-secret-31-bytes-xxxxxxxxx", "taskgate: TASKGATE_SECRET: must be at least 32"),
    ],
    ids=["missing", "31-bytes"],
)
def test_gateway_refuses_to_start_without_a_good_secret(
    env: dict[str, str], secret: str | None, says: str
) -> None:
    cli_env = {k: v for k, v in env.items() if k != "TASKGATE_SECRET"}
    if secret is not None:
        cli_env["TASKGATE_SECRET"] = secret
    out = run_cli(cli_env, "gateway")
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(says), out.stderr
    if secret is not None:
        assert secret not in out.stderr
    with pytest.raises(ConfigError):
        create_app(Settings.from_env(cli_env))


async def test_secret_never_reaches_the_logs(
    env: dict[str, str], aiohttp_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _, url = await gateway_apart(aiohttp_server, env, TASKGATE_LOG_LEVEL="DEBUG")
    async with aiohttp.ClientSession() as session:
        for headers in ({}, bearer("x.y.z"), bearer(make_token(user()))):
            async with session.post(url + "api/tasks", json=COUNT, headers=headers):
                pass
    client = await SocketClient(url, make_token(user())).connect()
    await client.call("submit", {"task": "os.system"})
    await client.close()
    assert caplog.records
    assert SECRET not in caplog.text
    assert all(SECRET not in str(r.args) for r in caplog.records)
