"""The pipelined Redis connection of the accept path (``shared.resp.Pipeline``) and the script
runs sent over it (``shared.records_batch.ScriptRuns``), against a real redis-server."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from pathlib import Path

import pytest
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeout

from shared.records_batch import ScriptRuns
from shared.redis_client import async_client
from shared.resp import Pipeline, command
from tests.support import RedisServer, fresh


async def test_script_runs_run_in_order_and_replies_stay_in_step(env: dict[str, str]) -> None:
    settings = fresh(env)
    client = async_client(settings.require_redis())
    pipe = Pipeline(settings.require_redis())
    key = settings.keys.prefix + "runs"
    source = (
        "local n = redis.call('RPUSH', ARGV[1], ARGV[2]) "
        "if ARGV[2] == 'boom' then return redis.error_reply('boom') end return n"
    )
    sha = hashlib.sha1(source.encode()).hexdigest()
    try:
        async with ScriptRuns(pipe, source, sha, single=False) as runs:
            for i in range(50):
                await runs.send([key, f"v{i}"])
            # Each run saw every one before it: the list grew by one per run, in order.
            assert await runs.replies() == list(range(1, 51))
        await client.delete(key)
        with pytest.raises(ResponseError, match="boom"):
            async with ScriptRuns(pipe, source, sha, single=False) as runs:
                for value in ("a", "boom", "c"):
                    await runs.send([key, value])
                await runs.replies()
        # Redis ran all three. The reply left unread is dropped when it arrives: every later
        # command on the shared connection still gets its own reply.
        assert await client.lrange(key, 0, -1) == [b"a", b"boom", b"c"]
        answers = await asyncio.gather(*(pipe.execute("ECHO", f"e{i}") for i in range(20)))
        assert answers == [f"e{i}".encode() for i in range(20)]
        # A lone run goes as EVALSHA; with the script gone from Redis it is sent again whole.
        await client.script_flush()
        async with ScriptRuns(pipe, source, sha, single=True) as runs:
            await runs.send([key, "d"])
            assert await runs.replies() == [4]
        assert await client.script_exists(sha) == [True]
    finally:
        pipe.close()
        await client.aclose()


async def test_pipeline_authenticates_selects_and_fails_cleanly(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", appendonly=False).start()
    try:
        admin = async_client(server.url)
        await admin.config_set("requirepass", "s3cret")
        await admin.aclose()
        wrong = Pipeline(f"redis://:nope@127.0.0.1:{server.port}/0")
        with pytest.raises(AuthenticationError):
            await wrong.execute("PING")
        wrong.close()
        url = f"redis://:s3cret@127.0.0.1:{server.port}/3"
        pipe = Pipeline(url, timeout=1.0)
        await pipe.execute("SET", "k", b"in-db-3")
        db3 = async_client(url)
        assert await db3.get("k") == b"in-db-3"  # SELECT 3 was sent
        await db3.aclose()
        with pytest.raises(ResponseError, match="wrong number of arguments"):
            await pipe.execute("GET")
        assert await pipe.execute("GET", "k") == b"in-db-3"
        # Redis frozen: a reply not in time is a TimeoutError, and everyone waiting behind it
        # fails too (the connection is aborted); once Redis is back, the next command
        # connects again.
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            waiting = [await pipe.send([command("GET", "k")]) for _ in range(3)]
            with pytest.raises(RedisTimeout):
                await pipe.reply(waiting[0])
            for fut in waiting[1:]:
                with pytest.raises((RedisTimeout, RedisConnectionError)):
                    await pipe.reply(fut)
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        assert await pipe.execute("GET", "k") == b"in-db-3"
        # Redis gone: a connection error, not a hang.
        server.stop()
        with pytest.raises((RedisConnectionError, RedisTimeout)):
            await pipe.execute("GET", "k")
        pipe.close()
    finally:
        server.stop()
