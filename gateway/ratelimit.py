"""Per-user submit rate (``TASKGATE_SUBMIT_RATE``): a token bucket kept in Redis.

The bucket lives in Redis and one Lua script refills and takes from it atomically, using Redis's
own clock, so the limit holds across any number of gateways. It holds ``rate`` tokens at most (one
second's worth, at least one), refills at ``rate`` per second, and a submit takes one token per
task. A refused take changes nothing and tells how long until enough tokens are back.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from shared.errors import BrokerUnavailable, RateLimited
from shared.settings import Settings

# KEYS[1]: the bucket (hash: tokens, ts in microseconds). ARGV: rate per second, capacity, cost.
# Returns {1, 0} when taken, {0, wait_ms} when not.
TOKEN_BUCKET_LUA = """
local rate, capacity, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
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
if tokens >= cost then
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens - cost), 'ts', tostring(now))
  redis.call('PEXPIRE', KEYS[1], ttl)
  return {1, 0}
end
return {0, math.ceil((cost - tokens) / rate * 1000)}
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


async def take_submit_tokens(
    client: aioredis.Redis, settings: Settings, user: str, count: int = 1
) -> None:
    """Take ``count`` submits from ``user``'s bucket, or raise ``RateLimited`` (429)."""
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
    script: Any = _bucket_script(client)
    try:
        taken, wait_ms = await script(
            keys=[bucket_key(settings, user)], args=[repr(rate), repr(capacity), str(count)]
        )
    except (RedisError, OSError) as exc:
        raise BrokerUnavailable(f"task store unreachable: {type(exc).__name__}") from exc
    if int(taken) != 1:
        retry_after = max(1, math.ceil(int(wait_ms) / 1000))
        raise RateLimited(
            f"too many submits (limit {rate:g} per second)",
            retry_after=retry_after,
            details={"retry_after": retry_after, "rate_per_s": rate},
        )
