"""Per-user submit rate (``TASKGATE_SUBMIT_RATE``): a token bucket kept in Redis.

The bucket lives in Redis and one Lua script refills and takes from it atomically, using Redis's
own clock, so the limit holds across any number of gateways. It holds ``TASKGATE_SUBMIT_BURST``
tokens at most (default: the largest batch the API takes, so any batch within the limits fits a
full bucket), refills at ``rate`` per second, and a submit takes one token per task. A refused
take changes nothing and tells how long until enough tokens are back. A request of more tasks
than the bucket can ever hold is refused with 422 and no ``Retry-After``: retrying cannot help.

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

from shared.errors import InvalidInput, RateLimited
from shared.keys import Keys
from shared.scripts import ScriptCall, source
from shared.settings import Settings
from shared.store_errors import STORE_FAILURES, store_unavailable

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
    capacity = settings.effective_submit_burst
    if count > capacity:
        raise InvalidInput(
            f"{count} tasks in one request is more than TASKGATE_SUBMIT_BURST ({capacity:g}) "
            "allows at once; send them in smaller requests",
            details={"field": "tasks", "count": count, "burst": capacity, "rate_per_s": rate},
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
    capacity = settings.effective_submit_burst
    script: Any = _bucket_script(client)
    call = bucket_call(settings.keys, user, rate, capacity, count, partial=partial)
    try:
        taken, wait_ms = await script(keys=call.keys, args=call.args)
    except STORE_FAILURES as exc:
        raise store_unavailable(exc) from exc
    return int(taken), int(wait_ms)
