"""RESP by hand: ``shared.resp.pack_args`` is byte for byte what redis-py sends, and bytes from
a peer that are not RESP end the pipeline or the subscriber cleanly (a loopback peer, no Redis)."""

from __future__ import annotations

import asyncio
from typing import Any

import hiredis
import pytest
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.live.subscriber import Subscriber
from shared.resp import Pipeline, command, pack_args


def test_pack_args_is_what_redis_py_sends() -> None:
    args: list[Any] = ["EVAL", "return 1", 0, "é\u20ac", b"a\r\nb", b"", -12, 10**18, "x" * 70_000]
    reference = b"".join(Connection().pack_command(*args))
    assert b"*%d\r\n" % len(args) + pack_args(args) == reference
    assert pack_args([]) == b""
    for bad in (1.5, True, None, ["x"]):
        with pytest.raises(TypeError):
            pack_args(["ok", bad])


async def _peer(answer: bytes) -> tuple[asyncio.Server, str]:
    """A loopback server that answers every read with ``answer`` (not a Redis: a broken peer)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            writer.write(answer)
            await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"redis://127.0.0.1:{port}/0"


async def test_bytes_that_are_not_resp_end_the_pipeline_after_the_replies_before_them() -> None:
    server, url = await _peer(b"+PONG\r\n\x00garbage\r\n")
    pipeline = Pipeline(url, timeout=2)
    try:
        # Two commands in one write: the first takes the good reply, the garbage behind it ends
        # the connection, so the second fails as a lost connection (never a hang or a wrong
        # reply), and so does a later one until the pipeline connects again.
        first = await pipeline.send([command("PING")])
        second = await pipeline.send([command("PING")])
        assert await pipeline.reply(first) == b"PONG"
        with pytest.raises(RedisConnectionError, match="protocol error"):
            await pipeline.reply(second)
    finally:
        pipeline.close()
        server.close()
        await server.wait_closed()


async def test_bytes_that_are_not_resp_end_the_subscriber() -> None:
    server, url = await _peer(b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n\x00garbage\r\n")
    sub = Subscriber(url)
    try:
        await sub.connect(2)  # no handshake: no password, and pub/sub ignores the database
        await sub.subscribe("c")  # the good reply before the garbage is taken
        with pytest.raises(RedisConnectionError, match="protocol error"):
            await sub.replies()
    finally:
        sub.close()
        server.close()
        await server.wait_closed()


def test_error_replies_map_to_redis_py_classes_with_or_without_its_private_parser(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """redis-py's parser (private, pinned) is used when it is there; when a release moved it,
    taskgate's own mapping gives the same public classes for the replies the gateway acts on."""
    from redis.exceptions import BusyLoadingError, NoScriptError, ReadOnlyError, ResponseError

    from shared import resp

    cases = {
        "NOSCRIPT No matching script": NoScriptError,
        "LOADING Redis is loading": BusyLoadingError,
        "READONLY You can't write against a read only replica.": ReadOnlyError,
        "ERR unknown command": ResponseError,
    }
    assert resp._PARSE_ERROR is not None  # the tested redis-py has it
    for text, cls in cases.items():
        assert type(resp.reply_error(hiredis.ReplyError(text))) is cls, text
    monkeypatch.setattr(resp, "_PARSE_ERROR", None)
    for text, cls in cases.items():
        assert type(resp.reply_error(hiredis.ReplyError(text))) is cls, text
