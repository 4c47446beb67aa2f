"""The outbox: brings back task messages the Redis broker lost in flight.

kombu's Redis transport takes a message off its queue with ``BRPOP`` and only then records it
as un-acked. A worker that dies (SIGKILL, OOM) or drops its broker connection while a ``BRPOP``
reply is on the wire loses that message: it is in no queue and not un-acked, so the visibility
timeout never brings it back, and its task would stay PENDING for good.

So the gateway keeps a copy of every message it publishes (``OutboxBroker``: hash
``<prefix>outbox``, and per queue a sorted set ``<prefix>outbox:at:<queue>`` of publish times)
and every gateway sweeps (``watch_outbox``, ``OUTBOX_SWEEP_LUA``, atomic): a PENDING task whose
message is older than every message left in its queue (the queue has drained past it) and is not
un-acked anywhere was lost; seen so on two sweeps ``confirm_s`` apart (a message between BRPOP
and its un-acked entry is only briefly in neither), its copy is pushed back at the consuming end
of its queue.

A task that started keeps its copy until it ends (``<prefix>outbox:running:<queue>``): when its
worker dies, kombu's visibility timeout puts its message back in the queue, and from there a
worker can lose it the same way (the soak caught one: restored, taken by BRPOP, worker killed
before the un-acked entry). So a started task marked stalled (no heartbeat: its worker is gone)
whose message is not un-acked either has its copy pushed back the same way. If the message was
in fact still queued (a backlog), the task gets a second copy.

A copy pushed back by mistake is harmless: a worker never runs a task whose record ended, and
waits while another run of it is alive (``worker.runner``).

It needs the records and the broker in the same Redis (the default); otherwise it is off.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.broker.redis_broker import RedisBroker
from gateway.broker.message import TaskMessage
from shared.errors import BrokerUnavailable
from shared.keys import Keys
from shared.records import TERMINAL_LUA
from shared.records_batch import InlinePush
from shared.redis_client import raise_if_cancel_swallowed

log = logging.getLogger("taskgate.redelivery")

# KEYS: outbox hash, outbox:at:<queue> zset, kombu's un-acked hash, strikes hash,
# outbox:running:<queue> zset.
# ARGV: records prefix, queue's base list key, now, min_age_s, margin_s, confirm_s, limit.
# Returns the ids pushed back.
OUTBOX_SWEEP_LUA = (
    TERMINAL_LUA
    + """
local outbox, at, unacked, strikes, running = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local prefix, base = ARGV[1], ARGV[2]
local now, min_age, margin = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local confirm, limit = tonumber(ARGV[6]), tonumber(ARGV[7])
local held = nil
local function is_held(id)
  if not held then held = redis.call('HVALS', unacked) end
  for _, m in ipairs(held) do
    if string.find(m, id, 1, true) then return true end
  end
  return false
end
local function drop(id)
  redis.call('HDEL', outbox, id)
  redis.call('ZREM', at, id)
  redis.call('ZREM', running, id)
  redis.call('HDEL', strikes, id)
end
-- A message in neither its queue nor kombu's un-acked set: on the second sighting at least
-- confirm_s after the first, its copy goes back to the consuming end of its queue.
local pushed = {}
local function strike(id)
  redis.call('HSETNX', strikes, id, ARGV[3])
  local first = tonumber(redis.call('HGET', strikes, id))
  local copy = redis.call('HGET', outbox, id)
  if copy and now - first >= confirm then
    local nl = string.find(copy, '\\n', 1, true)
    redis.call('RPUSH', string.sub(copy, 1, nl - 1), string.sub(copy, nl + 1))
    redis.call('HDEL', strikes, id)
    pushed[#pushed + 1] = id
    return true
  end
  return false
end
-- 1. PENDING tasks. How far the queue has drained: the publish time of the oldest message left
-- in any of its priority lists (the tail is consumed next). A tail we know nothing about: skip.
local frontier = math.huge
local known = true
local lists = {base}
for p = 1, 9 do lists[#lists + 1] = base .. '\\6\\22' .. p end
for _, l in ipairs(lists) do
  local tail = redis.call('LINDEX', l, -1)
  if tail then
    local id = string.match(tail, '"id": ?"([%x%-]+)"')
    local s = id and redis.call('ZSCORE', at, id)
    if not s then known = false break end
    s = tonumber(s)
    if s < frontier then frontier = s end
  end
end
if known then
  local cutoff = math.min(now - min_age, frontier - margin)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', at, '-inf', cutoff, 'LIMIT', 0, limit)) do
    local status = redis.call('HGET', prefix .. 'task:' .. id, 'status')
    if not status or TERMINAL[status] then
      drop(id)
    elseif status ~= '"PENDING"' then
      -- Started: from now on watched as a running task (2.), its copy kept until it ends.
      redis.call('ZREM', at, id)
      redis.call('ZADD', running, now, id)
      redis.call('HDEL', strikes, id)
    elseif is_held(id) then
      redis.call('HDEL', strikes, id)
    elseif strike(id) then
      redis.call('ZADD', at, now, id)
    end
  end
end
-- 2. Started tasks, oldest look first. One whose worker died is marked stalled (no heartbeat)
-- and its message is un-acked until kombu's visibility timeout puts it back in its queue. But
-- a message put back is taken with BRPOP like any other, and lost like any other by a worker
-- that dies before marking it un-acked: a stalled task whose message is not un-acked is
-- pushed back the same way. Each one looked at goes to the end of the line.
for _, id in ipairs(redis.call('ZRANGEBYSCORE', running, '-inf', now - min_age,
                               'LIMIT', 0, limit)) do
  local cur = redis.call('HMGET', prefix .. 'task:' .. id, 'status', 'stalled')
  if not cur[1] or TERMINAL[cur[1]] then
    drop(id)
  else
    redis.call('ZADD', running, now, id)
    if cur[2] ~= 'true' or is_held(id) then
      redis.call('HDEL', strikes, id)
    else
      strike(id)
    end
  end
end
return pushed
"""
)


def outbox_key(keys: Keys) -> str:
    return f"{keys.prefix}outbox"


def outbox_at_key(keys: Keys, queue: str) -> str:
    return f"{keys.prefix}outbox:at:{queue}"


def strikes_key(keys: Keys) -> str:
    return f"{keys.prefix}outbox:strikes"


def outbox_running_key(keys: Keys, queue: str) -> str:
    return f"{keys.prefix}outbox:running:{queue}"


class OutboxBroker:
    """A ``RedisBroker`` that keeps a copy of each message before it publishes it."""

    def __init__(self, inner: RedisBroker, keys: Keys) -> None:
        self.inner = inner
        self.keys = keys
        self.client: aioredis.Redis = inner.client

    async def publish(self, messages: Sequence[TaskMessage]) -> None:
        """Copies first, then the messages, in one round trip (a pipeline runs in order, so a
        sweep never sees a message whose copy is missing)."""
        now = time.time()
        prepared = self.inner.envelopes(messages)
        copies: dict[str, bytes] = {}
        published_at: dict[str, dict[str, float]] = {}
        for msg, key, envelope in prepared:
            copies[msg.task_id] = key.encode() + b"\n" + envelope
            published_at.setdefault(msg.queue, {})[msg.task_id] = now
        try:
            async with asyncio.timeout(self.inner.timeout):
                async with self.client.pipeline(transaction=False) as pipe:
                    pipe.hset(outbox_key(self.keys), mapping=copies)  # type: ignore[arg-type]
                    for queue, members in published_at.items():
                        pipe.zadd(outbox_at_key(self.keys, queue), members)
                    for key, values in self.inner.by_list(prepared).items():
                        pipe.lpush(key, *values)
                    await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"broker unreachable: {type(exc).__name__}") from exc

    def inline(self, messages: Sequence[TaskMessage], snapshots: Sequence[bytes]) -> InlinePush:
        """``messages`` (with their tasks' PENDING ``snapshots``, JSON) as the broker part of
        the record script (``BatchRecords.create_args``): pushed, copied to the outbox and
        announced in the same atomic run that writes their records. The records' Redis is
        this one."""
        entries = [
            (key, envelope, outbox_at_key(self.keys, msg.queue), snapshot)
            for (msg, key, envelope), snapshot in zip(
                self.inner.envelopes(messages), snapshots, strict=True
            )
        ]
        return InlinePush(outbox_key(self.keys), time.time(), entries)

    async def ping(self) -> None:
        await self.inner.ping()

    async def queue_depths(self, queues: Sequence[str]) -> dict[str, int]:
        return await self.inner.queue_depths(queues)

    async def close(self) -> None:
        await self.inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def watch_outbox(
    broker: OutboxBroker,
    queues: Sequence[str],
    interval: float,
    *,
    margin: float = 1.0,
    limit: int = 500,
) -> None:
    """Sweep every ``interval`` seconds until cancelled; a Redis error skips one round."""
    script: Any = broker.client.register_script(OUTBOX_SWEEP_LUA)
    keys = broker.keys
    unacked = f"{broker.inner.prefix}unacked"
    while True:
        raise_if_cancel_swallowed()
        await asyncio.sleep(interval)
        for queue in queues:
            try:
                async with asyncio.timeout(max(interval, 3.0)):
                    pushed = await script(
                        keys=[
                            outbox_key(keys),
                            outbox_at_key(keys, queue),
                            unacked,
                            strikes_key(keys),
                            outbox_running_key(keys, queue),
                        ],
                        args=[
                            keys.prefix,
                            broker.inner.queue_key(queue, 0),
                            repr(time.time()),
                            repr(interval),
                            repr(margin),
                            repr(interval),
                            limit,
                        ],
                    )
            except (RedisError, OSError) as exc:
                log.debug("outbox sweep of %s skipped: %s", queue, type(exc).__name__)
                continue
            for raw in pushed:
                tid = raw.decode() if isinstance(raw, bytes) else str(raw)
                log.warning("task %s: its message was lost in flight; published it again", tid)
