"""Per-user submit rate (``TASKGATE_SUBMIT_RATE``): a token bucket kept in Redis.

The bucket lives in Redis and one Lua script refills and takes from it atomically, using Redis's
own clock, so the limit holds across any number of gateways. It holds ``rate`` tokens at most (one
second's worth, at least one), refills at ``rate`` per second, and a submit takes one token per
task. A refused take changes nothing and tells how long until enough tokens are back.

Single submits arriving together are accepted as one group (``gateway.tasks.coalesce``): their
take is partial, granting as many of the group as there are tokens, so each request gets the
answer it would have got alone (the first ones in, the rest 429).

The script is ``shared/lua/submit_bucket.lua``; ``bucket_call`` builds its KEYS and ARGV.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from shared.errors import BrokerUnavailable, RateLimited
from shared.keys import Keys
from shared.scripts import ScriptCall, source
from shared.settings import Settings

# The script's text, read at import: never as blocking I/O on the loop.
TOKEN_BUCKET_LUA = source("submit_bucket.lua")


_SCRIPTS: weakref.WeakKeyDictionary[aioredis.Redis, Any] = weakref.WeakKeyDictionary()


def _bucket_script(client: aioredis.Redis) -> Any:
    """The bucket script of ``client``, registered (and hashed) once, not on every submit."""
    script = _SCRIPTS.get(client)
    if script is None:
        script = _SCRIPTS[client] = client.register_script(TOKEN_BUCKET_LUA)
    return script


def bucket_call(
    keys: Keys, user: str, rate: float, capacity: float, cost: int, *, partial: bool
) -> ScriptCall:
    """``submit_bucket.lua``'s KEYS and ARGV (see its header)."""
    return ScriptCall(
        [keys.submit_bucket(user)],
        [repr(rate), repr(capacity), str(cost), "1" if partial else "0"],
    )


def _limited(rate: float, wait_ms: int) -> RateLimited:
    retry_after = max(1, math.ceil(wait_ms / 1000))
    return RateLimited(
        f"too many submits (limit {rate:g} per second)",
        retry_after=retry_after,
        details={"retry_after": retry_after, "rate_per_s": rate},
    )


async def take_submit_tokens(
    client: aioredis.Redis, settings: Settings, user: str, count: int = 1
) -> None:
    """Take ``count`` submits from ``user``'s bucket, all or none, or raise ``RateLimited``."""
    rate = settings.submit_rate
    if rate <= 0 or count <= 0:
        return
    capacity = max(1.0, rate)
    if count > capacity:
        raise RateLimited(
            f"at most {capacity:g} tasks can be submitted at once at this rate",
            retry_after=math.ceil(count / rate),
            details={"rate_per_s": rate, "burst": capacity},
        )
    taken, wait_ms = await _take(client, settings, user, count, partial=False)
    if taken != count:
        raise _limited(rate, wait_ms)


async def grant_submit_tokens(
    client: aioredis.Redis, settings: Settings, user: str, count: int
) -> tuple[int, RateLimited | None]:
    """Take up to ``count`` submits: how many were granted, and the error for the rest."""
    rate = settings.submit_rate
    if rate <= 0 or count <= 0:
        return count, None
    taken, wait_ms = await _take(client, settings, user, count, partial=True)
    return taken, (_limited(rate, wait_ms) if taken < count else None)


async def _take(
    client: aioredis.Redis, settings: Settings, user: str, count: int, *, partial: bool
) -> tuple[int, int]:
    rate = settings.submit_rate
    capacity = max(1.0, rate)
    script: Any = _bucket_script(client)
    call = bucket_call(settings.keys, user, rate, capacity, count, partial=partial)
    try:
        taken, wait_ms = await script(keys=call.keys, args=call.args)
    except (RedisError, OSError) as exc:
        raise BrokerUnavailable(f"task store unreachable: {type(exc).__name__}") from exc
    return int(taken), int(wait_ms)
