"""Task records in Redis, and the atomic steps that change them.

A record is one hash per task. Snapshot fields are stored JSON-encoded, so the Lua scripts can
assemble the snapshot by concatenation; internal fields start with ``_``:

- ``_owner``: the user id (raw string); ``_pct``: the highest percent reported;
  ``_cancel``: ``1`` once a cancel was asked; ``_attempt``: runs started;
  ``_hb``: the time of the running worker's last heartbeat (``HEARTBEAT_LUA``).

``stalled`` (a snapshot field) is ``true`` while a RUNNING task has missed three heartbeats
(``STALL_LUA``, run by the gateways) and goes back to ``false`` at its next change or heartbeat.
Every record expires ``retention_s`` after its last change, whatever its status; a running
task's heartbeat counts as a change, so only abandoned records expire unfinished.

Every change is one script run (``TRANSITION``): check, write, bump ``seq``, maintain the user's
active/ended sets, publish the update, all atomically. Workers use ``SyncRecords`` (redis-py),
the gateway ``AsyncRecords`` (redis.asyncio); both run the same scripts with the same arguments.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson
import redis
import redis.asyncio as aioredis

from shared.keys import Keys
from shared.schema import SCHEMA_VERSION, SNAPSHOT_FIELDS, Snapshot
from shared.status import TERMINAL_NAMES, TaskStatus

_SNAPSHOT_LUA = """
local function snapshot(key)
  local vals = redis.call('HMGET', key, {fields})
  local parts = {{}}
  local names = {{{names}}}
  for i, name in ipairs(names) do
    local v = vals[i]
    if not v then v = 'null' end
    parts[i] = '"' .. name .. '":' .. v
  end
  return '{{' .. table.concat(parts, ',') .. '}}'
end
-- Publish the record as it is now on the progress channel; returns its snapshot.
local function publish(prefix, key, owner)
  local snap = snapshot(key)
  redis.call('PUBLISH', prefix .. 'progress',
    '{{"v":{version},"owner":' .. cjson.encode(owner) .. ',"snapshot":' .. snap .. '}}')
  return snap
end
""".format(
    fields=", ".join(f"'{f}'" for f in SNAPSHOT_FIELDS),
    names=", ".join(f"'{f}'" for f in SNAPSHOT_FIELDS),
    version=SCHEMA_VERSION,
)

# Lua: TERMINAL[status] is true for a terminal status as records store it (JSON-encoded).
TERMINAL_LUA = "local TERMINAL = {%s}\n" % ", ".join(
    f"['\"{name}\"'] = true" for name in sorted(TERMINAL_NAMES)
)

# KEYS[1]: record. ARGV: prefix, retention_s, mode, new_status, percent, owner_check,
# only_if_status (comma list of JSON-encoded statuses or ''), now, then field/value pairs.
# Returns {code, seq, cancel_flag[, snapshot]}; code 1 applied, 0 already terminal,
# 2 skipped (stale progress or status precondition), 3 cancel flag set without a change,
# -1 no such record (or not the owner's).
TRANSITION_LUA = (
    _SNAPSHOT_LUA
    + TERMINAL_LUA
    + """
local key = KEYS[1]
local prefix, retention, mode = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local new_status, percent, owner_check = ARGV[4], ARGV[5], ARGV[6]
local only_if, now = ARGV[7], tonumber(ARGV[8])
if redis.call('EXISTS', key) == 0 then return {-1, 0, '0'} end
local cur = redis.call('HMGET', key, 'status', '_owner', '_pct', '_cancel', 'seq')
local status, owner = cur[1], cur[2]
local pct = tonumber(cur[3]) or 0
local cancel = cur[4] or '0'
local seq = tonumber(cur[5]) or 0
if owner_check ~= '' and owner ~= owner_check then return {-1, 0, '0'} end
if TERMINAL[status] then return {0, seq, cancel} end
if mode == 'cancel' then
  redis.call('HSET', key, '_cancel', '1')
  cancel = '1'
  if status ~= '"PENDING"' then return {3, seq, cancel} end
elseif mode == 'progress' then
  if status ~= '"RUNNING"' then return {2, seq, cancel} end
  local p = tonumber(percent)
  if p < pct then return {2, seq, cancel} end
  redis.call('HSET', key, '_pct', percent)
end
if only_if ~= '' then
  local ok = false
  for s in string.gmatch(only_if, '[^,]+') do
    if s == status then ok = true end
  end
  if not ok then return {2, seq, cancel} end
end
if mode ~= 'progress' and percent ~= '' then redis.call('HSET', key, '_pct', percent) end
for i = 9, #ARGV, 2 do
  redis.call('HSET', key, ARGV[i], ARGV[i + 1])
end
if new_status ~= '' then redis.call('HSET', key, 'status', new_status) end
-- The task moved: it is not stalled (any more).
if redis.call('HGET', key, 'stalled') == 'true' then redis.call('HSET', key, 'stalled', 'false') end
seq = redis.call('HINCRBY', key, 'seq', 1)
if new_status ~= '' and TERMINAL[new_status] then
  redis.call('ZREM', prefix .. 'user:' .. owner .. ':active', string.sub(key, #prefix + 6))
  redis.call('ZADD', prefix .. 'user:' .. owner .. ':ended', now, string.sub(key, #prefix + 6))
  redis.call('ZREM', prefix .. 'running', string.sub(key, #prefix + 6))
end
-- Every record, terminal or not, lives retention seconds after its last change.
redis.call('EXPIRE', key, retention)
local snap = publish(prefix, key, owner)
return {1, seq, cancel, snap}
"""
)

# KEYS[1]: record. ARGV: prefix, owner, created_at, max_active, retention_s, then field/value pairs.
# Returns {1, snapshot}, {-2} when the id exists, {-3, active} when the user is at max_active.
CREATE_LUA = (
    _SNAPSHOT_LUA
    + """
local key = KEYS[1]
local prefix, owner, created, max_active = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local retention = tonumber(ARGV[5])
if redis.call('EXISTS', key) == 1 then return {-2, ''} end
local active_key = prefix .. 'user:' .. owner .. ':active'
if max_active > 0 then
  local n = redis.call('ZCARD', active_key)
  if n >= max_active then
    -- A record that never ended expires too; drop such ids before refusing.
    for _, id in ipairs(redis.call('ZRANGE', active_key, 0, -1)) do
      if redis.call('EXISTS', prefix .. 'task:' .. id) == 0 then
        redis.call('ZREM', active_key, id)
      end
    end
    n = redis.call('ZCARD', active_key)
    if n >= max_active then return {-3, tostring(n)} end
  end
end
local task_id = string.sub(key, #prefix + 6)
for i = 6, #ARGV, 2 do
  redis.call('HSET', key, ARGV[i], ARGV[i + 1])
end
-- _pct and _cancel start absent: their readers take that as 0.
redis.call('HSET', key, '_owner', owner, 'seq', 1)
redis.call('EXPIRE', key, retention)
redis.call('ZADD', prefix .. 'user:' .. owner .. ':tasks', created, task_id)
redis.call('ZADD', active_key, created, task_id)
-- Ids of expired records leave the index through beat's taskgate.sweep; bound it here too.
redis.call('ZREMRANGEBYSCORE', prefix .. 'user:' .. owner .. ':tasks', '-inf', created - retention)
redis.call('ZREMRANGEBYSCORE', prefix .. 'user:' .. owner .. ':ended', '-inf', created - retention)
return {1, snapshot(key)}
"""
)

# Heartbeats and stall checks read the clock of the Redis server (TIME), never of a worker or a
# gateway, so clock skew between hosts cannot fake or hide a stall.
_NOW_LUA = """
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

# KEYS[1]: record. ARGV: prefix, retention_s. A worker's heartbeat for a RUNNING task: stamps
# ``_hb``, scores the task in the running set, keeps the record alive, and clears ``stalled``
# (bumping seq and publishing) if the task had been marked stalled.
# Returns {code, cancel_flag}: 1 applied and published, 2 stamped, 0 not RUNNING, -1 no record.
HEARTBEAT_LUA = (
    _SNAPSHOT_LUA
    + _NOW_LUA
    + """
local key = KEYS[1]
local prefix, retention = ARGV[1], tonumber(ARGV[2])
if redis.call('EXISTS', key) == 0 then return {-1, '0'} end
local cur = redis.call('HMGET', key, 'status', '_owner', '_cancel', 'stalled')
local cancel = cur[3] or '0'
if cur[1] ~= '"RUNNING"' then return {0, cancel} end
local t = now()
redis.call('HSET', key, '_hb', string.format('%.3f', t))
redis.call('ZADD', prefix .. 'running', t, string.sub(key, #prefix + 6))
redis.call('EXPIRE', key, retention)
if cur[4] ~= 'true' then return {2, cancel} end
redis.call('HSET', key, 'stalled', 'false')
redis.call('HINCRBY', key, 'seq', 1)
publish(prefix, key, cur[2])
return {1, cancel}
"""
)

# KEYS[1]: the running set. ARGV: prefix, stale_after_s, retention_s, limit. Marks every RUNNING
# task whose last heartbeat is older than stale_after_s as stalled (bumps seq, publishes) and
# returns their ids. Idempotent, so every gateway may run it. A marked task is re-scored
# retention_s ahead (a heartbeat brings it back); tasks no longer RUNNING leave the set.
STALL_LUA = (
    _SNAPSHOT_LUA
    + _NOW_LUA
    + """
local running, prefix = KEYS[1], ARGV[1]
local stale_after, retention, limit = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local t = now()
local marked = {}
local ids = redis.call('ZRANGEBYSCORE', running, '-inf', t - stale_after, 'LIMIT', 0, limit)
for _, id in ipairs(ids) do
  local key = prefix .. 'task:' .. id
  local cur = redis.call('HMGET', key, 'status', '_owner', '_hb', 'stalled')
  if cur[1] ~= '"RUNNING"' then
    redis.call('ZREM', running, id)
  else
    local hb = tonumber(cur[3])
    if cur[4] ~= 'true' and (not hb or hb < t - stale_after) then
      redis.call('HSET', key, 'stalled', 'true')
      redis.call('HINCRBY', key, 'seq', 1)
      publish(prefix, key, cur[2])
      marked[#marked + 1] = id
    end
    redis.call('ZADD', running, t + retention, id)
  end
end
return marked
"""
)

# KEYS[1]: record. ARGV: prefix, owner_check. Returns the snapshot or false.
SNAPSHOT_LUA = (
    _SNAPSHOT_LUA
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], '_owner') ~= ARGV[2] then return false end
return snapshot(KEYS[1])
"""
)

Mode = Literal["status", "progress", "cancel"]


@dataclass(frozen=True, slots=True)
class TransitionResult:
    """What a transition did. ``applied`` means seq moved and an update was published."""

    code: int
    seq: int
    cancel_requested: bool
    snapshot: bytes | None = None

    @property
    def applied(self) -> bool:
        return self.code == 1

    @property
    def missing(self) -> bool:
        return self.code == -1

    @property
    def already_terminal(self) -> bool:
        return self.code == 0


def _enc(value: Any) -> bytes:
    return orjson.dumps(value)


def transition_args(
    keys: Keys,
    retention_s: int,
    mode: Mode,
    *,
    status: TaskStatus | None = None,
    percent: float | None = None,
    owner: str | None = None,
    only_if: Sequence[TaskStatus] = (),
    fields: dict[str, Any] | None = None,
) -> list[Any]:
    args: list[Any] = [
        keys.prefix,
        retention_s,
        mode,
        _enc(status.value) if status is not None else "",
        repr(float(percent)) if percent is not None else "",
        owner if owner is not None else "",
        ",".join(_enc(s.value).decode() for s in only_if),
        repr(time.time()),
    ]
    for name, value in (fields or {}).items():
        args.append(name)
        args.append(_enc(value))
    return args


def _result(raw: Sequence[Any]) -> TransitionResult:
    snap = raw[3] if len(raw) > 3 else None
    flag = raw[2]
    return TransitionResult(
        code=int(raw[0]),
        seq=int(raw[1]),
        cancel_requested=flag in (b"1", "1"),
        snapshot=snap.encode() if isinstance(snap, str) else snap,
    )


def update_bytes(owner: str, snapshot: bytes) -> bytes:
    """The progress-channel update for a snapshot already encoded, as the scripts publish it."""
    return b'{"v":%d,"owner":%s,"snapshot":%s}' % (SCHEMA_VERSION, _enc(owner), snapshot)


def updates_head(owner: str) -> bytes:
    """The start of a message of several updates of ``owner`` (``schema.decode_updates``): the
    snapshots follow, comma-separated, then ``]}``."""
    return b'{"v":%d,"owner":%s,"snapshots":[' % (SCHEMA_VERSION, _enc(owner))


def decode_snapshot(raw: bytes | str) -> Snapshot:
    snap: Snapshot = orjson.loads(raw)
    return snap


def new_record_fields(
    task_id: str, task: str, queue: str, created_at: float, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "task_id": task_id,
        "task": task,
        "queue": queue,
        "status": TaskStatus.PENDING.value,
        "progress": {"percent": 0.0, "message": None, "data": {}},
        "result": None,
        "error": None,
        "created_at": created_at,
        "started_at": None,
        "finished_at": None,
        "stalled": False,
    }
    if extra:
        fields.update(extra)
    return fields


def _create_args(
    keys: Keys, owner: str, fields: dict[str, Any], max_active: int, retention_s: int
) -> list[Any]:
    args: list[Any] = [keys.prefix, owner, repr(fields["created_at"]), max_active, retention_s]
    for name, value in fields.items():
        if value is not None:  # a field never stored reads as null (``_SNAPSHOT_LUA``)
            args.append(name)
            args.append(_enc(value))
    return args


class SyncRecords:
    """Record access for workers (blocking redis-py; workers are threads/processes, not loops)."""

    def __init__(self, client: redis.Redis, keys: Keys, retention_s: int) -> None:
        self.client = client
        self.keys = keys
        self.retention_s = retention_s
        self._transition = client.register_script(TRANSITION_LUA)
        self._snapshot = client.register_script(SNAPSHOT_LUA)
        self._heartbeat = client.register_script(HEARTBEAT_LUA)

    def transition(self, task_id: str, mode: Mode, **kw: Any) -> TransitionResult:
        args = transition_args(self.keys, self.retention_s, mode, **kw)
        return _result(self._transition(keys=[self.keys.task(task_id)], args=args))

    def snapshot(self, task_id: str) -> Snapshot | None:
        raw = self._snapshot(keys=[self.keys.task(task_id)], args=[self.keys.prefix, ""])
        return decode_snapshot(raw) if raw else None

    def cancel_requested(self, task_id: str) -> bool:
        return self.client.hget(self.keys.task(task_id), "_cancel") in (b"1", "1")

    def attempts(self, task_id: str) -> int:
        """How many runs of the task have started (``_attempt``; 0 before the first)."""
        raw = self.client.hget(self.keys.task(task_id), "_attempt")
        return int(raw) if raw else 0

    def heartbeat(self, task_id: str) -> TransitionResult:
        """Stamp a RUNNING task's heartbeat (``HEARTBEAT_LUA``); code 0 once it left RUNNING."""
        args: list[str | int] = [self.keys.prefix, self.retention_s]
        code, flag = self._heartbeat(keys=[self.keys.task(task_id)], args=args)
        return TransitionResult(code=int(code), seq=0, cancel_requested=flag in (b"1", "1"))


class AsyncRecords:
    """Record access for the gateway (redis.asyncio)."""

    def __init__(self, client: aioredis.Redis, keys: Keys, retention_s: int) -> None:
        self.client = client
        self.keys = keys
        self.retention_s = retention_s
        self._transition = client.register_script(TRANSITION_LUA)
        self._create = client.register_script(CREATE_LUA)
        self._snapshot = client.register_script(SNAPSHOT_LUA)
        self._stall = client.register_script(STALL_LUA)

    async def transition(self, task_id: str, mode: Mode, **kw: Any) -> TransitionResult:
        args = transition_args(self.keys, self.retention_s, mode, **kw)
        return _result(await self._transition(keys=[self.keys.task(task_id)], args=args))

    async def create(
        self, owner: str, fields: dict[str, Any], max_active: int
    ) -> tuple[int, bytes]:
        """Write a new PENDING record (seq 1). Returns (code, snapshot-or-count)."""
        args = _create_args(self.keys, owner, fields, max_active, self.retention_s)
        code, payload = await self._create(keys=[self.keys.task(fields["task_id"])], args=args)
        return int(code), payload.encode() if isinstance(payload, str) else payload

    async def discard_many(self, owner: str, task_ids: Sequence[str]) -> None:
        """Undo ``create`` after the broker refused the messages: nothing stays accepted.

        Not in MULTI: over ``maxmemory`` Redis refuses every command queued in a transaction,
        DEL included, just when a half-written batch most needs taking back. Each command
        alone is allowed. Between them an index may still list a record already deleted:
        readers skip missing records (they expire the same way), and the quota errs on the
        strict side for that moment.
        """
        if not task_ids:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.delete(*[self.keys.task(t) for t in task_ids])
            pipe.zrem(self.keys.user_tasks(owner), *task_ids)
            pipe.zrem(self.keys.user_active(owner), *task_ids)
            await pipe.execute()

    async def discard(self, owner: str, task_id: str) -> None:
        await self.discard_many(owner, [task_id])

    async def publish_snapshot(self, owner: str, snapshot: bytes) -> None:
        """Announce a snapshot as it is (no seq bump): used once the broker accepted a task."""
        await self.client.publish(self.keys.progress_channel, update_bytes(owner, snapshot))

    async def snapshot_raw(self, task_id: str, owner: str | None) -> bytes | None:
        raw = await self._snapshot(
            keys=[self.keys.task(task_id)], args=[self.keys.prefix, owner or ""]
        )
        if not raw:
            return None
        return raw.encode() if isinstance(raw, str) else bytes(raw)

    async def snapshot(self, task_id: str, owner: str | None) -> Snapshot | None:
        raw = await self.snapshot_raw(task_id, owner)
        return decode_snapshot(raw) if raw else None

    async def mark_stalled(self, stale_after: float, limit: int = 1000) -> list[str]:
        """Mark RUNNING tasks without a heartbeat for ``stale_after`` seconds as stalled.

        Returns the ids newly marked. Safe to run from every gateway at once (``STALL_LUA``).
        """
        ids = await self._stall(
            keys=[self.keys.running],
            args=[self.keys.prefix, repr(float(stale_after)), self.retention_s, limit],
        )
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    async def snapshots(self, task_ids: Sequence[str], owner: str) -> list[Snapshot]:
        """Snapshots of many tasks in one round trip; missing ones are skipped."""
        if not task_ids:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for tid in task_ids:
                await self._snapshot(
                    keys=[self.keys.task(tid)], args=[self.keys.prefix, owner], client=pipe
                )
            raws = await pipe.execute()
        return [decode_snapshot(r) for r in raws if r]

    async def list_ids(self, owner: str, limit: int) -> list[str]:
        ids = await self.client.zrevrange(self.keys.user_tasks(owner), 0, max(0, limit - 1))
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    async def live_ids(self, owner: str, since: float) -> list[str]:
        """Ids of the user's non-terminal tasks and of those that ended after ``since``."""
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.zrange(self.keys.user_active(owner), 0, -1)
            pipe.zrangebyscore(self.keys.user_ended(owner), since, "+inf")
            active, ended = await pipe.execute()
        seen: dict[str, None] = {}
        for i in [*active, *ended]:
            seen[i.decode() if isinstance(i, bytes) else i] = None
        return list(seen)


# KEYS[1]: record. ARGV: prefix, field, value (JSON), expect (the field's current JSON, or '' for
# no condition). Sets one annotation field (``webhook``) on any record, terminal or not, without
# touching its status; bumps seq and publishes the update, like a transition. A compare-and-set,
# so two deliverers of one webhook cannot overwrite each other's result.
# Returns {code, seq, snapshot}: 1 applied, 2 the field was not ``expect``, -1 no such record.
ANNOTATE_LUA = (
    _SNAPSHOT_LUA
    + """
local key = KEYS[1]
local prefix, field, value, expect = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('EXISTS', key) == 0 then return {-1, 0, ''} end
if expect ~= '' and redis.call('HGET', key, field) ~= expect then return {2, 0, ''} end
redis.call('HSET', key, field, value)
local seq = redis.call('HINCRBY', key, 'seq', 1)
local snap = publish(prefix, key, redis.call('HGET', key, '_owner'))
return {1, seq, snap}
"""
)

ANNOTATION_FIELDS = frozenset({"webhook"})


@dataclass(frozen=True, slots=True)
class AnnotateResult:
    code: int
    seq: int
    snapshot: bytes | None

    @property
    def applied(self) -> bool:
        return self.code == 1


class SyncAnnotations:
    """Annotation fields of records (``ANNOTATE_LUA``), for workers."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._annotate = client.register_script(ANNOTATE_LUA)

    def read(self, task_id: str, field: str) -> bytes | None:
        """The field's stored JSON, as ``annotate``'s ``expect`` wants it."""
        raw = self.client.hget(self.keys.task(task_id), field)
        return raw.encode() if isinstance(raw, str) else raw

    def annotate(
        self, task_id: str, field: str, value: Any, *, expect: bytes | None = None
    ) -> AnnotateResult:
        if field not in ANNOTATION_FIELDS:
            raise ValueError(f"{field!r} is not an annotation field")
        code, seq, snap = self._annotate(
            keys=[self.keys.task(task_id)],
            args=[self.keys.prefix, field, _enc(value), expect or b""],
        )
        snap_bytes = snap.encode() if isinstance(snap, str) else snap
        return AnnotateResult(int(code), int(seq), snap_bytes or None)
