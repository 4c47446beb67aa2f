"""The task manager: the one object behind the HTTP API and the Socket.IO events.

It validates a submission, writes the record, publishes the Celery message, and answers reads,
lists and cancels, always on behalf of one user: another user's task is indistinguishable from
an unknown one.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

import orjson
from redis.exceptions import RedisError

from gateway.broker import MAX_PRIORITY, Broker
from gateway.celery_message import build_task_message
from shared.errors import (
    BadRequest,
    BrokerUnavailable,
    Conflict,
    InvalidInput,
    NotFound,
    RateLimited,
    TaskgateError,
)
from shared.records import AsyncRecords, decode_snapshot, new_record_fields
from shared.registry import TaskSpec, get_task
from shared.schema import Snapshot
from shared.settings import Settings
from shared.status import TaskStatus

log = logging.getLogger("taskgate.manager")

SUBMIT_FIELDS = frozenset({"task", "input", "queue", "priority", "idempotency_key", "callback_url"})
_TASK_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
RECENT_S = 600.0
MAX_LIST = 500
_IDEM_MAX = 200

Revoker = Callable[[str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Submission:
    spec: TaskSpec
    input: dict[str, Any]
    queue: str
    priority: int
    idempotency_key: str | None


def _field_error(field: str, reason: str) -> InvalidInput:
    return InvalidInput(f"{field} {reason}", details={"field": field, "reason": reason})


def parse_submission(body: Any) -> Submission:
    """Check a submit body against the contract and the task's schema; raise ``InvalidInput``."""
    if not isinstance(body, dict):
        raise _field_error("body", "must be a JSON object")
    extra = sorted(str(k)[:64] for k in body if k not in SUBMIT_FIELDS)
    if extra:
        raise _field_error(extra[0], "is not an accepted option")
    spec = get_task(body.get("task"))
    data = spec.schema.validate(body.get("input"))
    queue = body.get("queue", spec.queue)
    if queue != spec.queue:
        raise _field_error("queue", f"must be {spec.queue!r} for {spec.name}")
    priority = body.get("priority", 0)
    if (
        isinstance(priority, bool)
        or not isinstance(priority, int)
        or not 0 <= priority <= MAX_PRIORITY
    ):
        raise _field_error("priority", f"must be an integer from 0 to {MAX_PRIORITY}")
    key = body.get("idempotency_key")
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= _IDEM_MAX):
        raise _field_error("idempotency_key", f"must be a string of 1 to {_IDEM_MAX} characters")
    if body.get("callback_url") is not None:
        raise _field_error("callback_url", "is not supported by this gateway yet")
    return Submission(spec, data, queue, priority, key)


def valid_task_id(task_id: object) -> TypeGuard[str]:
    return isinstance(task_id, str) and _TASK_ID.match(task_id) is not None


class TaskManager:
    """Submit, read, list and cancel tasks for a user. Safe to share across requests."""

    def __init__(
        self,
        settings: Settings,
        records: AsyncRecords,
        broker: Broker,
        revoke: Revoker | None = None,
    ) -> None:
        self.settings = settings
        self.records = records
        self.broker = broker
        self._revoke = revoke
        self._background: set[asyncio.Task[None]] = set()

    async def submit(self, user: str, body: Any) -> Snapshot:
        """Accept one task: record first, then the broker. 503 leaves nothing accepted."""
        sub = parse_submission(body)
        task_id = str(uuid.uuid4())
        try:
            if sub.idempotency_key is not None:
                existing = await self._claim_idempotency(user, sub, body, task_id)
                if existing is not None:
                    return existing
            snap = await self._create(user, sub, task_id)
            message = build_task_message(
                task_id, sub.spec.name, sub.queue, kwargs=sub.input, priority=sub.priority
            )
            try:
                await self.broker.publish([message])
            except BrokerUnavailable:
                await self._undo(user, task_id, sub)
                raise
        except RedisError as exc:
            raise BrokerUnavailable(f"task store unreachable: {type(exc).__name__}") from exc
        try:
            await self.records.publish_snapshot(user, snap)
        except RedisError:
            log.warning("task %s accepted but its PENDING update was not published", task_id)
        return decode_snapshot(snap)

    async def _create(self, user: str, sub: Submission, task_id: str) -> bytes:
        fields = new_record_fields(task_id, sub.spec.name, sub.queue, time.time())
        code, payload = await self.records.create(user, fields, self.settings.max_active)
        if code == -3:
            raise RateLimited(
                f"too many active tasks (limit {self.settings.max_active})",
                retry_after=1.0,
                details={"active": int(payload)},
            )
        if code != 1:
            raise TaskgateError(f"could not create task record (code {code})")
        return payload

    async def _undo(self, user: str, task_id: str, sub: Submission) -> None:
        try:
            await self.records.discard(user, task_id)
            if sub.idempotency_key is not None:
                await self.records.client.delete(self._idem_key(user, sub.idempotency_key))
        except RedisError:
            log.exception("could not discard record of refused task %s", task_id)

    def _idem_key(self, user: str, key: str) -> str:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return f"{self.settings.keys.prefix}idem:{user}:{digest}"

    async def _claim_idempotency(
        self, user: str, sub: Submission, body: Mapping[str, Any], task_id: str
    ) -> Snapshot | None:
        """Claim the key for ``task_id``; if it was taken, return that task (or 409)."""
        assert sub.idempotency_key is not None
        body_hash = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
        key = self._idem_key(user, sub.idempotency_key)
        value = f"{task_id}|{body_hash}"
        if await self.records.client.set(key, value, nx=True, ex=self.settings.retention_s):
            return None
        raw = await self.records.client.get(key)
        if raw is None:
            raise Conflict("idempotency key is being used by a concurrent request; retry")
        other_id, _, other_hash = (raw.decode() if isinstance(raw, bytes) else raw).partition("|")
        if other_hash != body_hash:
            raise Conflict("idempotency key was already used with a different body")
        snap = await self.records.snapshot(other_id, user)
        if snap is None:
            raise Conflict("idempotency key refers to a task that no longer exists")
        return snap

    async def get(self, user: str, task_id: object) -> Snapshot:
        if not valid_task_id(task_id):
            raise NotFound("no such task")
        snap = await self.records.snapshot(task_id, user)
        if snap is None:
            raise NotFound("no such task")
        return snap

    async def list_tasks(
        self, user: str, status: str | None = None, limit: int = 50
    ) -> list[Snapshot]:
        """The user's tasks, newest first, optionally of one status."""
        if status is not None and status not in TaskStatus.__members__:
            raise BadRequest(f"status must be one of {', '.join(TaskStatus.__members__)}")
        if not 1 <= limit <= MAX_LIST:
            raise BadRequest(f"limit must be from 1 to {MAX_LIST}")
        window = limit if status is None else MAX_LIST * 4
        ids = await self.records.list_ids(user, window)
        snaps = await self.records.snapshots(ids, user)
        if status is not None:
            snaps = [s for s in snaps if s["status"] == status]
        return snaps[:limit]

    async def cancel(self, user: str, task_id: object) -> Snapshot:
        """Ask a task to stop: a queued task ends CANCELLED now, a running one at its next step."""
        if not valid_task_id(task_id):
            raise NotFound("no such task")
        result = await self.records.transition(
            task_id,
            "cancel",
            owner=user,
            status=TaskStatus.CANCELLED,
            fields={"finished_at": time.time()},
        )
        if result.missing:
            raise NotFound("no such task")
        if result.code == 3 and self._revoke is not None:
            self._spawn(self._revoke(task_id))
        return await self.get(user, task_id)

    async def live(self, user: str) -> list[Snapshot]:
        """What a client gets on connect: tasks not ended, or ended in the last 10 minutes."""
        ids = await self.records.live_ids(user, time.time() - RECENT_S)
        return await self.records.snapshots(ids, user)

    async def watch(self, user: str, wanted: Any) -> list[Snapshot]:
        """Snapshots of the given tasks whose ``seq`` is above the one the client has."""
        if not isinstance(wanted, dict) or len(wanted) > MAX_LIST:
            raise _field_error("tasks", f"must be an object of at most {MAX_LIST} task ids")
        known: dict[str, int] = {}
        for tid, seq in wanted.items():
            if isinstance(seq, bool) or not isinstance(seq, int):
                raise _field_error(f"tasks.{str(tid)[:64]}", "must be an integer seq")
            if valid_task_id(tid):
                known[tid] = seq
        snaps = await self.records.snapshots(list(known), user)
        return [s for s in snaps if s["seq"] > known[s["task_id"]]]

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def guarded() -> None:
            try:
                await coro
            except Exception:
                log.exception("background step failed")

        task = asyncio.create_task(guarded())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
