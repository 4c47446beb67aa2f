"""Workflows on Celery's canvas: chain, group and chord, published without Celery.

A workflow is submitted as one body (``{"chain": [...]}``, ``{"group": [...]}`` or
``{"chord": {"header": [...], "body": step}}``); each step is a submit body. Every step gets its
own task record (PENDING, with ``workflow_id``) before anything is published, then:

- chain: one message for the first step whose embed carries the rest as Celery signatures; the
  worker's own trace publishes each next step with the previous result as its first argument;
- group: one message per step, all with the group id;
- chord: one message per header step with the group id and the body signature in the embed; the
  chord size is written to the result backend the way ``celery.canvas.chord`` does, so the
  worker's backend calls the body with the list of header results.

The owner watches one rolled-up ``workflow`` snapshot: each child's status and percent, an overall
percent (the mean), a status, and a ``seq`` that is the sum of the children's (so it rises with
every child change and clients can drop stale ones the same way as for tasks).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import orjson
from redis.exceptions import RedisError

from gateway.broker.message import TaskMessage
from gateway.broker.redis_broker import redis_priority
from gateway.tasks.accept import CREATED, Acceptor, create_error
from gateway.tasks.backend import ResultBackend
from gateway.tasks.ratelimit import take_submit_tokens
from gateway.tasks.submission import Submission, build_message, field_error, parse_submission
from shared.errors import BrokerUnavailable, NotFound, TaskgateError
from shared.records import AsyncRecords
from shared.records_batch import pending_common, pending_snapshot
from shared.settings import Settings
from shared.status import TERMINAL_NAMES
from shared.store_errors import store_unavailable

log = logging.getLogger("taskgate.workflows")

MAX_STEPS = 100
KINDS = ("chain", "group", "chord")
# Options a single submit takes that a step does not (a step's timing is its workflow's).
STEP_REFUSED = frozenset({"idempotency_key", "callback_url", "countdown", "eta", "expires"})
_SEVERITY = ("FAILED", "TIMED_OUT", "CANCELLED")


@dataclass(frozen=True, slots=True)
class Plan:
    kind: str
    steps: list[Submission]  # chord: header steps, then the body last
    ids: list[str]


def parse_workflow(body: Any, routes: Any = ()) -> tuple[str, list[Submission]]:
    if not isinstance(body, dict) or len(body) != 1 or next(iter(body)) not in KINDS:
        raise field_error(
            "body", 'must be one of {"chain": [...]}, {"group": [...]}, {"chord": {...}}'
        )
    kind, spec = next(iter(body.items()))
    if kind == "chord":
        if not isinstance(spec, dict) or set(spec) != {"header", "body"}:
            raise field_error("chord", 'must be {"header": [steps], "body": step}')
        raw_steps, path = [*_step_list(spec["header"], "chord.header"), spec["body"]], "chord"
    else:
        raw_steps, path = _step_list(spec, kind), kind
    steps = []
    for i, step in enumerate(raw_steps):
        where = f"{path}.body" if kind == "chord" and i == len(raw_steps) - 1 else f"{path}[{i}]"
        if isinstance(step, dict) and (STEP_REFUSED & set(step)):
            raise field_error(where, f"steps take no {', '.join(sorted(STEP_REFUSED))}")
        try:
            steps.append(parse_submission(step, routes))
        except TaskgateError as exc:
            details = exc.details if isinstance(exc.details, dict) else {}
            field = details.get("field", "")
            exc.details = {**details, "field": f"{where}.{field}" if field else where}
            exc.message = f"{where}: {exc.message}"
            raise
    return kind, steps


def _step_list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list) or not 0 < len(value) <= MAX_STEPS:
        raise field_error(where, f"must be a list of 1 to {MAX_STEPS} steps")
    return value


class Workflows:
    """Submits workflows and rolls their children up into one snapshot."""

    def __init__(
        self,
        settings: Settings,
        records: AsyncRecords,
        acceptor: Acceptor,
        backend: ResultBackend,
        cancel: Callable[[str, str], Awaitable[Any]],
    ) -> None:
        self.settings = settings
        self.records = records
        self.acceptor = acceptor
        self.backend = backend
        self.cancel_task = cancel
        self.keys = settings.keys
        self.amqp = settings.broker_is_amqp

    def _priority(self, p: int) -> int:
        return p if self.amqp else redis_priority(p)

    def _signature(
        self, sub: Submission, task_id: str, wid: str, chord_size: int | None = None
    ) -> dict[str, Any]:
        return {
            "task": sub.spec.name,
            "args": [],
            "kwargs": sub.input,
            "options": {
                "task_id": task_id,
                "queue": sub.queue,
                "priority": self._priority(sub.priority),
                "root_id": wid,
                "time_limit": sub.spec.time_limit,
                "soft_time_limit": sub.spec.soft_time_limit,
            },
            "subtask_type": None,
            "immutable": False,
            "chord_size": chord_size,
        }

    def messages(self, plan: Plan, wid: str) -> list[TaskMessage]:
        steps, ids = plan.steps, plan.ids

        def message(sub: Submission, task_id: str, **extra: Any) -> TaskMessage:
            return build_message(sub, task_id, root_id=wid, **extra)

        if plan.kind == "group":
            return [
                message(s, tid, group_id=wid, group_index=i)
                for i, (s, tid) in enumerate(zip(steps, ids, strict=True))
            ]
        if plan.kind == "chain":
            rest = [self._signature(s, tid, wid) for s, tid in zip(steps[1:], ids[1:], strict=True)]
            # Celery pops the next step from the end of the embedded chain.
            return [message(steps[0], ids[0], embed=_embed(chain=rest[::-1] or None))]
        header, body = steps[:-1], steps[-1]
        body_sig = self._signature(body, ids[-1], wid, chord_size=len(header))
        return [
            message(s, tid, embed=_embed(chord=body_sig), group_id=wid, group_index=i)
            for i, (s, tid) in enumerate(zip(header, ids[:-1], strict=True))
        ]

    async def submit(self, user: str, body: Any) -> dict[str, Any]:
        """Record every step, then publish; 503 leaves nothing accepted."""
        kind, steps = parse_workflow(body, self.settings.routes)
        # A workflow's steps are submits like any other: they take from the same bucket.
        await take_submit_tokens(self.records.client, self.settings, user, count=len(steps))
        wid = str(uuid.uuid4())
        plan = Plan(kind, steps, [str(uuid.uuid4()) for _ in steps])
        now = time.time()
        try:
            await self._save(user, wid, plan, now)
            rows = [
                {"task_id": tid, "task": s.spec.name, "queue": s.queue, "workflow_id": wid}
                for s, tid in zip(steps, plan.ids, strict=True)
            ]
            max_active = self.settings.max_active
            common = pending_common(now)
            codes = await self.acceptor.batch.create(user, common, rows, now, max_active)
            refused = [code for code in codes if code != CREATED]
            if refused:
                await self._discard(
                    user, wid, [t for t, c in zip(plan.ids, codes, strict=True) if c == CREATED]
                )
                raise create_error(refused[0], str(max_active).encode(), max_active)
            try:
                if kind == "chord":
                    await self._set_chord_size(wid, len(steps) - 1)
                await self.acceptor.broker.publish(self.messages(plan, wid))
            except (BrokerUnavailable, RedisError):
                await self._discard(user, wid, plan.ids)
                raise
        except RedisError as exc:
            raise store_unavailable(exc) from exc
        # Accepted now; if this fails, the records are the truth and clients catch up from them.
        with contextlib.suppress(RedisError):
            await self.acceptor.batch.announce(user, [pending_snapshot(common, r) for r in rows])
        self.acceptor.count(steps)
        return {"workflow_id": wid, "kind": kind, "task_ids": plan.ids}

    async def _save(self, user: str, wid: str, plan: Plan, now: float) -> None:
        key = self.keys.workflow(wid)
        settings = self.settings
        # Outlives its children: they expire retention_s after they end.
        ttl = settings.retention_s + int(settings.time_limit) * len(plan.ids) + 3600
        async with self.records.client.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={
                    "owner": user,
                    "kind": plan.kind,
                    "task_ids": orjson.dumps(plan.ids),
                    "created_at": repr(now),
                },
            )
            pipe.expire(key, ttl)
            await pipe.execute()

    async def _discard(self, user: str, wid: str, task_ids: list[str]) -> None:
        try:
            await self.records.discard_many(user, task_ids)
            await self.records.client.delete(self.keys.workflow(wid))
        except RedisError:
            pass

    async def _set_chord_size(self, wid: str, size: int) -> None:
        # As celery.backends.redis.RedisBackend.set_chord_size, with the backend's key prefix.
        client = self.backend.client()
        prefix = self.keys.chord_meta(wid)
        async with client.pipeline(transaction=True) as pipe:
            pipe.delete(f"{prefix}.c")
            pipe.set(f"{prefix}.s", size, ex=86400)
            await pipe.execute()

    async def _load(self, user: str, wid: Any) -> tuple[str, list[str], float]:
        if not isinstance(wid, str) or len(wid) > 64:
            raise NotFound("no such workflow")
        got = await self.records.client.hgetall(self.keys.workflow(wid))
        raw = cast(dict[bytes, bytes], got)
        if not raw or raw.get(b"owner", b"").decode() != user:
            raise NotFound("no such workflow")
        return raw[b"kind"].decode(), orjson.loads(raw[b"task_ids"]), float(raw[b"created_at"])

    async def snapshot(self, user: str, wid: Any) -> dict[str, Any]:
        kind, ids, created = await self._load(user, wid)
        snaps = {s["task_id"]: s for s in await self.records.snapshots(ids, user)}
        children: list[dict[str, Any]] = []
        for tid in ids:
            s = snaps.get(tid)
            if s is None:
                children.append(
                    {"task_id": tid, "task": None, "status": "EXPIRED", "percent": 100.0, "seq": 0}
                )
                continue
            done = s["status"] in TERMINAL_NAMES
            children.append(
                {
                    "task_id": tid,
                    "task": s["task"],
                    "status": s["status"],
                    "percent": 100.0 if done else float(s["progress"]["percent"]),
                    "seq": s["seq"],
                }
            )
        return {
            "workflow_id": wid,
            "kind": kind,
            "status": rollup_status([c["status"] for c in children]),
            "seq": sum(int(c["seq"]) for c in children),
            "percent": round(sum(c["percent"] for c in children) / len(children), 3),
            "children": children,
            "created_at": created,
        }

    async def cancel(self, user: str, wid: Any) -> dict[str, Any]:
        _, ids, _ = await self._load(user, wid)
        for tid in ids:
            await self.cancel_task(user, tid)
        return await self.snapshot(user, wid)


def _embed(chain: Any = None, chord: Any = None) -> dict[str, Any]:
    """The protocol-2 embed: what Celery runs after a task (its chain, a chord's body)."""
    return {"callbacks": None, "errbacks": None, "chain": chain, "chord": chord}


def rollup_status(statuses: list[str]) -> str:
    if all(s == "COMPLETED" for s in statuses):
        return "COMPLETED"
    if all(s in TERMINAL_NAMES or s == "EXPIRED" for s in statuses):
        return next((sev for sev in _SEVERITY if sev in statuses), "FAILED")
    if any(s in ("RUNNING", "RETRYING") or s in TERMINAL_NAMES for s in statuses):
        return "RUNNING"
    return "PENDING"
