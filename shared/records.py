"""Task records in Redis, and the atomic steps that change them.

A record is one hash per task. Snapshot fields are stored JSON-encoded, so the Lua scripts can
assemble the snapshot by concatenation; internal fields start with ``_``:

- ``_owner``: the user id (raw string); ``_pct``: the highest percent reported;
  ``_cancel``: ``1`` once a cancel was asked; ``_attempt``: runs started;
  ``_hb``: the time of the running worker's last heartbeat (``heartbeat.lua``).

``stalled`` (a snapshot field) is ``true`` while a RUNNING task has missed three heartbeats
(``stall.lua``, run by the gateways) and goes back to ``false`` at its next change or heartbeat.
Every record expires ``retention_s`` after its last change, whatever its status; a running
task's heartbeat counts as a change, so only abandoned records expire unfinished.

Every change is one script run (``transition.lua``): check, write, bump ``seq``, maintain the
user's active/ended sets, publish the update, all atomically; a task that ends leaves the
outbox (``gateway.broker.outbox``) in the same run. Workers and the producer
(``shared.producer``) use ``SyncRecords`` (redis-py), the gateway ``AsyncRecords``
(redis.asyncio); both run the same scripts with the same arguments. The scripts live in
``shared/lua/`` (``shared.scripts``); each has a ``*_call`` function here that builds its KEYS
and ARGV in the order of its header, and its return codes are the ``IntEnum`` classes below.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Literal

import orjson
import redis
import redis.asyncio as aioredis

from shared.keys import Keys
from shared.schema import SCHEMA_VERSION, Snapshot
from shared.scripts import ScriptCall, source
from shared.status import TaskStatus

# The scripts' text (``shared/lua/``), read at import: never as blocking I/O on a loop.
TRANSITION_LUA = source("transition.lua")
CREATE_LUA = source("create.lua")
HEARTBEAT_LUA = source("heartbeat.lua")
STALL_LUA = source("stall.lua")
SNAPSHOT_LUA = source("snapshot.lua")
ANNOTATE_LUA = source("annotate.lua")


class TransitionCode(IntEnum):
    """What ``transition.lua`` did (its first reply)."""

    APPLIED = 1
    ALREADY_TERMINAL = 0
    SKIPPED = 2
    CANCEL_FLAGGED = 3
    MISSING = -1
    # The start guard's refusals (``StartGuard``): nothing changed.
    RETRIED = 4
    LIVE = 5
    WORKER_LOST = 6
    # A COMPLETED end with ``cancel_wins``: a cancel was asked, the task ended CANCELLED.
    CANCELLED_INSTEAD = 7


class HeartbeatCode(IntEnum):
    """What ``heartbeat.lua`` did (its first reply)."""

    PUBLISHED = 1
    STAMPED = 2
    NOT_RUNNING = 0
    MISSING = -1


class CreateCode(IntEnum):
    """What ``create.lua`` (and, per record, ``create_batch.lua``) did."""

    CREATED = 1
    EXISTS = -2
    AT_QUOTA = -3


class AnnotateCode(IntEnum):
    """What ``annotate.lua`` did (its first reply)."""

    APPLIED = 1
    CONFLICT = 2
    MISSING = -1


Mode = Literal["status", "progress", "cancel"]
# Seq moved and an update was published (HeartbeatCode.PUBLISHED is the same number as APPLIED).
_APPLIED = (TransitionCode.APPLIED, TransitionCode.CANCELLED_INSTEAD)
# The 4th reply is a number, not a snapshot.
_DETAIL = (TransitionCode.LIVE, TransitionCode.WORKER_LOST)


@dataclass(frozen=True, slots=True)
class StartGuard:
    """The checks a run's start makes in the same script run as its move to RUNNING
    (``transition.lua``, ARGV[9]): this delivery's ``attempt`` not already retried, no other run
    alive (a heartbeat younger than ``stale_after_s``), fewer than ``max_runs`` runs started.
    The run is counted (``_attempt``) as it starts."""

    attempt: int
    stale_after_s: float
    max_runs: int

    def arg(self) -> str:
        return f"start:{int(self.attempt)}:{float(self.stale_after_s):.3f}:{int(self.max_runs)}"


@dataclass(frozen=True, slots=True)
class TransitionResult:
    """What a transition (or a heartbeat) did. ``applied`` means seq moved and an update was
    published."""

    code: TransitionCode | HeartbeatCode
    seq: int
    cancel_requested: bool
    snapshot: bytes | None = None
    # LIVE: the other run's heartbeat age (s); WORKER_LOST: the runs started; a start applied
    # with a ``StartGuard``: the run it is (1 for the first).
    detail: float | None = None

    @property
    def applied(self) -> bool:
        return self.code in _APPLIED

    @property
    def missing(self) -> bool:
        return self.code == TransitionCode.MISSING

    @property
    def already_terminal(self) -> bool:
        return self.code == TransitionCode.ALREADY_TERMINAL


def _enc(value: Any) -> bytes:
    return orjson.dumps(value)


@dataclass(frozen=True)
class CeleryMeta:
    """Celery's own result of a task, as its Redis backend stores it: ``transition.lua`` writes
    it with the task's COMPLETED end (``worker/celery_result.py`` builds it)."""

    key: bytes  # the backend's get_key_for_task(id)
    value: bytes | str  # the meta, encoded by the backend
    expires_s: int  # 0: none


def transition_call(
    keys: Keys,
    task_id: str,
    retention_s: int,
    mode: Mode,
    *,
    status: TaskStatus | None = None,
    percent: float | None = None,
    owner: str | None = None,
    only_if: Sequence[TaskStatus] = (),
    start: StartGuard | None = None,
    cancel_wins: bool = False,
    celery_meta: CeleryMeta | None = None,
    fields: dict[str, Any] | None = None,
) -> ScriptCall:
    """``transition.lua``'s KEYS and ARGV (see its header). ``start``: a run's start, checked
    and counted in the script (``StartGuard``), so that of two deliveries starting at once only
    one starts the task. ``cancel_wins``: a COMPLETED end that becomes CANCELLED if a cancel was
    asked (``TransitionCode.CANCELLED_INSTEAD``). ``celery_meta``: Celery's own result of a
    COMPLETED end, written with it (``CeleryMeta``)."""
    call = ScriptCall(
        [
            keys.task(task_id),
            keys.running,
            keys.progress_channel,
            keys.user_prefix,
            keys.outbox,
            keys.outbox_strikes,
            *outbox_index_prefixes(keys),
        ],
        [
            task_id,
            retention_s,
            mode,
            _enc(status.value) if status is not None else "",
            repr(float(percent)) if percent is not None else "",
            owner if owner is not None else "",
            ",".join(_enc(s.value).decode() for s in only_if),
            repr(time.time()),
            start.arg() if start is not None else ("complete" if cancel_wins else ""),
            celery_meta.value if celery_meta is not None else "",
            celery_meta.expires_s if celery_meta is not None else "",
        ],
    )
    if celery_meta is not None:
        call.keys.append(celery_meta.key)
    for name, value in (fields or {}).items():
        call.args.append(name)
        call.args.append(_enc(value))
    return call


def outbox_index_prefixes(keys: Keys) -> tuple[str, str]:
    """What ``Keys.outbox_times(queue)`` and ``Keys.outbox_running(queue)`` put before the
    queue: ``transition.lua`` reads a task's queue from its record and joins them with it."""
    return keys.outbox_times(""), keys.outbox_running("")


def _transition_result(raw: Sequence[Any]) -> TransitionResult:
    code = TransitionCode(int(raw[0]))
    fourth = raw[3] if len(raw) > 3 else None
    flag = raw[2] in (b"1", "1")
    if code in _DETAIL:
        return TransitionResult(code, int(raw[1]), flag, None, float(fourth or 0))
    snap = fourth.encode() if isinstance(fourth, str) else fourth
    runs = float(raw[4]) if len(raw) > 4 else None  # a start guard's run count
    return TransitionResult(code, int(raw[1]), flag, snap, runs)


def heartbeat_call(keys: Keys, task_id: str, retention_s: int) -> ScriptCall:
    """``heartbeat.lua``'s KEYS and ARGV (see its header)."""
    return ScriptCall(
        [keys.task(task_id), keys.running, keys.progress_channel], [task_id, retention_s]
    )


def stall_call(keys: Keys, stale_after: float, retention_s: int, limit: int) -> ScriptCall:
    """``stall.lua``'s KEYS and ARGV (see its header)."""
    return ScriptCall(
        [keys.running, keys.task_prefix, keys.progress_channel],
        [repr(float(stale_after)), retention_s, limit],
    )


def snapshot_call(keys: Keys, task_id: str, owner: str | None) -> ScriptCall:
    """``snapshot.lua``'s KEYS and ARGV (see its header)."""
    return ScriptCall([keys.task(task_id)], [owner or ""])


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


def create_call(
    keys: Keys, owner: str, fields: dict[str, Any], max_active: int, retention_s: int
) -> ScriptCall:
    """``create.lua``'s KEYS and ARGV (see its header) for the record ``fields`` (with
    ``task_id``; ``new_record_fields``)."""
    task_id = fields["task_id"]
    call = ScriptCall(
        [
            keys.task(task_id),
            keys.user_tasks(owner),
            keys.user_active(owner),
            keys.user_ended(owner),
            keys.task_prefix,
        ],
        [task_id, owner, repr(fields["created_at"]), max_active, retention_s],
    )
    for name, value in fields.items():
        if value is not None:  # a field never stored reads as null (``snapshot_json.lua``)
            call.args.append(name)
            call.args.append(_enc(value))
    return call


def _discard_commands(pipe: Any, keys: Keys, owner: str, task_ids: Sequence[str]) -> None:
    """Queue what takes new records back: the records and their ids in the owner's sets."""
    pipe.delete(*[keys.task(t) for t in task_ids])
    pipe.zrem(keys.user_tasks(owner), *task_ids)
    pipe.zrem(keys.user_active(owner), *task_ids)


# A status change a transition applied: the status set, and the snapshot after it (JSON). Each
# change applies in exactly one process (the script compares and sets atomically), so a count
# taken here, summed over processes, counts every change once.
StatusObserver = Callable[[TaskStatus, bytes | None], None]


def _observe(
    observer: StatusObserver | None, status: TaskStatus | None, result: TransitionResult
) -> None:
    """Tell ``observer`` of a status change the transition applied (the status it ended in)."""
    if status is None or observer is None or not result.applied:
        return
    if result.code == TransitionCode.CANCELLED_INSTEAD:
        status = TaskStatus.CANCELLED
    observer(status, result.snapshot)


class SyncRecords:
    """Record access for workers (blocking redis-py; workers are threads/processes, not loops)."""

    def __init__(self, client: redis.Redis, keys: Keys, retention_s: int) -> None:
        self.client = client
        self.keys = keys
        self.retention_s = retention_s
        self._transition = client.register_script(TRANSITION_LUA)
        self._create = client.register_script(CREATE_LUA)
        self._snapshot = client.register_script(SNAPSHOT_LUA)
        self._heartbeat = client.register_script(HEARTBEAT_LUA)
        # Told of every status change this process applied (metrics: ``StatusObserver``).
        self.observer: StatusObserver | None = None

    def transition(self, task_id: str, mode: Mode, **kw: Any) -> TransitionResult:
        call = transition_call(self.keys, task_id, self.retention_s, mode, **kw)
        result = _transition_result(self._transition(keys=call.keys, args=call.args))
        _observe(self.observer, kw.get("status"), result)
        return result

    def create(
        self, owner: str, fields: dict[str, Any], max_active: int
    ) -> tuple[CreateCode, bytes]:
        """Write a new PENDING record (seq 1), as ``AsyncRecords.create`` does (the producer's
        path, ``shared.producer``). Returns (code, snapshot-or-count)."""
        call = create_call(self.keys, owner, fields, max_active, self.retention_s)
        code, payload = self._create(keys=call.keys, args=call.args)
        return CreateCode(int(code)), payload.encode() if isinstance(payload, str) else payload

    def discard(self, owner: str, task_id: str) -> None:
        """Undo ``create`` after the broker refused the message (``AsyncRecords.discard_many``
        says why the commands go without MULTI)."""
        with self.client.pipeline(transaction=False) as pipe:
            _discard_commands(pipe, self.keys, owner, [task_id])
            pipe.execute()

    def publish_snapshot(self, owner: str, snapshot: bytes) -> None:
        """Announce a snapshot as it is (no seq bump): once the broker took a new task."""
        self.client.publish(self.keys.progress_channel, update_bytes(owner, snapshot))

    def owner(self, task_id: str) -> str | None:
        """Who owns the task (``_owner``), or ``None`` when it has no record."""
        raw = self.client.hget(self.keys.task(task_id), "_owner")
        return raw.decode() if isinstance(raw, bytes) else raw

    def snapshot(self, task_id: str) -> Snapshot | None:
        call = snapshot_call(self.keys, task_id, None)
        raw = self._snapshot(keys=call.keys, args=call.args)
        return decode_snapshot(raw) if raw else None

    def cancel_requested(self, task_id: str) -> bool:
        return self.client.hget(self.keys.task(task_id), "_cancel") in (b"1", "1")

    def attempts(self, task_id: str) -> int:
        """How many runs of the task have started (``_attempt``; 0 before the first)."""
        raw = self.client.hget(self.keys.task(task_id), "_attempt")
        return int(raw) if raw else 0

    def heartbeat(self, task_id: str) -> TransitionResult:
        """Stamp a RUNNING task's heartbeat (``heartbeat.lua``); its code is a
        ``HeartbeatCode``, ``NOT_RUNNING`` once the task left RUNNING."""
        call = heartbeat_call(self.keys, task_id, self.retention_s)
        code, flag = self._heartbeat(keys=call.keys, args=call.args)
        return TransitionResult(
            code=HeartbeatCode(int(code)), seq=0, cancel_requested=flag in (b"1", "1")
        )


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
        # Told of every status change this process applied (metrics: ``StatusObserver``).
        self.observer: StatusObserver | None = None

    async def transition(self, task_id: str, mode: Mode, **kw: Any) -> TransitionResult:
        call = transition_call(self.keys, task_id, self.retention_s, mode, **kw)
        result = _transition_result(await self._transition(keys=call.keys, args=call.args))
        _observe(self.observer, kw.get("status"), result)
        return result

    async def create(
        self, owner: str, fields: dict[str, Any], max_active: int
    ) -> tuple[CreateCode, bytes]:
        """Write a new PENDING record (seq 1). Returns (code, snapshot-or-count)."""
        call = create_call(self.keys, owner, fields, max_active, self.retention_s)
        code, payload = await self._create(keys=call.keys, args=call.args)
        return CreateCode(int(code)), payload.encode() if isinstance(payload, str) else payload

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
            _discard_commands(pipe, self.keys, owner, task_ids)
            await pipe.execute()

    async def discard(self, owner: str, task_id: str) -> None:
        await self.discard_many(owner, [task_id])

    async def publish_snapshot(self, owner: str, snapshot: bytes) -> None:
        """Announce a snapshot as it is (no seq bump): used once the broker accepted a task."""
        await self.client.publish(self.keys.progress_channel, update_bytes(owner, snapshot))

    async def snapshot_raw(self, task_id: str, owner: str | None) -> bytes | None:
        call = snapshot_call(self.keys, task_id, owner)
        raw = await self._snapshot(keys=call.keys, args=call.args)
        if not raw:
            return None
        return raw.encode() if isinstance(raw, str) else bytes(raw)

    async def snapshot(self, task_id: str, owner: str | None) -> Snapshot | None:
        raw = await self.snapshot_raw(task_id, owner)
        return decode_snapshot(raw) if raw else None

    async def mark_stalled(self, stale_after: float, limit: int = 1000) -> list[str]:
        """Mark RUNNING tasks without a heartbeat for ``stale_after`` seconds as stalled.

        Returns the ids newly marked. Safe to run from every gateway at once (``stall.lua``).
        """
        call = stall_call(self.keys, stale_after, self.retention_s, limit)
        ids = await self._stall(keys=call.keys, args=call.args)
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    async def snapshots(self, task_ids: Sequence[str], owner: str) -> list[Snapshot]:
        """Snapshots of many tasks in one round trip; missing ones are skipped."""
        if not task_ids:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for tid in task_ids:
                call = snapshot_call(self.keys, tid, owner)
                await self._snapshot(keys=call.keys, args=call.args, client=pipe)
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


ANNOTATION_FIELDS = frozenset({"webhook"})


def annotate_call(
    keys: Keys, task_id: str, field: str, value: Any, expect: bytes | None
) -> ScriptCall:
    """``annotate.lua``'s KEYS and ARGV (see its header)."""
    return ScriptCall(
        [keys.task(task_id), keys.progress_channel], [field, _enc(value), expect or b""]
    )


@dataclass(frozen=True, slots=True)
class AnnotateResult:
    code: AnnotateCode
    seq: int
    snapshot: bytes | None

    @property
    def applied(self) -> bool:
        return self.code == AnnotateCode.APPLIED


class SyncAnnotations:
    """Annotation fields of records (``annotate.lua``), for workers."""

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
        call = annotate_call(self.keys, task_id, field, value, expect)
        code, seq, snap = self._annotate(keys=call.keys, args=call.args)
        snap_bytes = snap.encode() if isinstance(snap, str) else snap
        return AnnotateResult(AnnotateCode(int(code)), int(seq), snap_bytes or None)
