"""Per-user submit rate (``TASKGATE_SUBMIT_RATE``): a token bucket kept in Redis.

The bucket lives in Redis and one Lua script refills and takes from it atomically, using Redis's
own clock, so the limit holds across any number of gateways. It holds ``rate`` tokens at most (one
second's worth, at least one), refills at ``rate`` per second, and a submit takes one token per
task. A refused take changes nothing and tells how long until enough tokens are back.

Single submits arriving together are accepted as one group (``gateway.tasks.coalesce``): their take is
partial, granting as many of the group as there are tokens, so each request gets the answer it
would have got alone (the first ones in, the rest 429).
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from shared.errors import BrokerUnavailable, RateLimited
from shared.settings import Settings

# KEYS[1]: the bucket (hash: tokens, ts in microseconds). ARGV: rate per second, capacity, cost,
# partial (1: take as many whole tokens as there are, up to cost). Returns {taken, wait_ms}:
# taken is cost or 0 (or, partial, what was granted); wait_ms is how long until the rest.
TOKEN_BUCKET_LUA = """
local rate, capacity, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local partial = ARGV[4] == '1'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cur = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(cur[1]), tonumber(cur[2])
if tokens == nil or ts == nil then
  tokens, ts = capacity, now
end
if now > ts then
  tokens = math.min(capacity, tokens + (now - ts) * rate / 1000000)
end
local ttl = math.ceil(capacity / rate * 1000) + 1000
local take = cost
if tokens < cost then
  if not partial then return {0, math.ceil((cost - tokens) / rate * 1000)} end
  take = math.floor(tokens)
end
if take > 0 then
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens - take), 'ts', tostring(now))
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return {take, math.max(0, math.ceil((cost - tokens) / rate * 1000))}
"""


_SCRIPTS: weakref.WeakKeyDictionary[aioredis.Redis, Any] = weakref.WeakKeyDictionary()


def _bucket_script(client: aioredis.Redis) -> Any:
    """The bucket script of ``client``, registered (and hashed) once, not on every submit."""
    script = _SCRIPTS.get(client)
    if script is None:
        script = _SCRIPTS[client] = client.register_script(TOKEN_BUCKET_LUA)
    return script


def bucket_key(settings: Settings, user: str) -> str:
    return f"{settings.keys.prefix}rate:submit:{user}"


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
    try:
        taken, wait_ms = await script(
            keys=[bucket_key(settings, user)],
            args=[repr(rate), repr(capacity), str(count), "1" if partial else "0"],
        )
    except (RedisError, OSError) as exc:
        raise BrokerUnavailable(f"task store unreachable: {type(exc).__name__}") from exc
    return int(taken), int(wait_ms)
