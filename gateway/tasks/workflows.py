"""Workflows on Celery's canvas: chain, group and chord, nested, published without Celery.

A workflow is submitted as one body (``{"chain": [...]}``, ``{"group": [...]}`` or
``{"chord": {"header": [...], "body": step}}``), whose steps are submit bodies or, nested, more
of the same (``gateway.tasks.workflow_body`` parses it and holds the limits). Every task step
gets its own task record (PENDING, with ``workflow_id``) before anything is published; then the
steps that start at once are published, each carrying what follows it as Celery signatures,
and the worker's own Celery runs the rest (``gateway.tasks.workflow_canvas``):

- a chain's next step gets the previous result as its first argument;
- a group hands on the list of its steps' results (a nested group's spliced in);
- a chord's body gets the list of its header's results; the size of each chord the gateway
  starts is written to the result backend the way ``celery.canvas.chord`` does.

Steps that start at once and are delayed (``countdown``, ``eta``) wait in the gateway's hold
(``gateway.tasks.delayed``) like single submits; later steps carry their timing to Celery.

The owner watches one rolled-up ``workflow`` snapshot: each task's status and percent, the
tree of the body with each task's id, an overall percent (the mean of the tasks', never lower
than one shown before: a retry starts a task's percent again), a status, and a ``seq`` that is
the sum of the tasks' (so it rises with every change and clients drop stale ones as for tasks).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import orjson
from redis.exceptions import RedisError

from gateway.broker.message import TaskMessage
from gateway.broker.redis_broker import redis_priority
from gateway.tasks.accept import CREATED, Acceptor, create_error
from gateway.tasks.backend import ResultBackend
from gateway.tasks.delayed import DelayedQueue
from gateway.tasks.ratelimit import take_submit_tokens
from gateway.tasks.submission import MAX_DELAY_S
from gateway.tasks.workflow_body import (
    Chain,
    Chord,
    Group,
    Node,
    Step,
    Workflow,
    parse_workflow,
)
from gateway.tasks.workflow_canvas import Canvas, Start, check_parts, normalize
from shared.errors import BrokerUnavailable, NotFound
from shared.keys import Keys
from shared.records import AsyncRecords
from shared.records_batch import pending_common, pending_snapshot
from shared.scripts import ScriptCall, source
from shared.settings import Settings
from shared.status import TERMINAL_NAMES
from shared.store_errors import store_unavailable

log = logging.getLogger("taskgate.workflows")

# The script's text, read at import: never as blocking I/O on the loop.
WORKFLOW_PERCENT_LUA = source("workflow_percent.lua")
_SEVERITY = ("FAILED", "TIMED_OUT", "CANCELLED")


def percent_call(keys: Keys, workflow_id: str, percent: float) -> ScriptCall:
    """``workflow_percent.lua``'s KEYS and ARGV (see its header)."""
    return ScriptCall([keys.workflow(workflow_id)], [repr(percent)])


def tree_of(node: Node) -> dict[str, Any]:
    """The body's shape with each task step as ``{"task_id", "task"}``: which id is which."""
    match node:
        case Step():
            return {"task_id": node.task_id, "task": node.sub.spec.name}
        case Chain(steps):
            return {"chain": [tree_of(s) for s in steps]}
        case Group(steps):
            return {"group": [tree_of(s) for s in steps]}
        case Chord(header, body):
            return {"chord": {"header": [tree_of(s) for s in header], "body": tree_of(body)}}


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
        self._percent = records.client.register_script(WORKFLOW_PERCENT_LUA)

    def _priority(self, p: int) -> int:
        return p if self.amqp else redis_priority(p)

    def parse(self, body: Any, workflow_id: str) -> tuple[Workflow, Start]:
        """Check a body and plan its start; ``InvalidInput`` (422) names the field."""
        settings = self.settings
        flow = parse_workflow(
            body,
            workflow_id,
            settings.routes,
            max_delay_s=min(MAX_DELAY_S, settings.retention_s / 2),
            visibility_s=settings.visibility_timeout,
            time_limit_s=settings.time_limit,
            amqp=self.amqp,
        )
        root = normalize(flow.root)
        check_parts(root)
        return flow, Canvas(workflow_id, self._priority).start(root)

    async def submit(self, user: str, body: Any) -> dict[str, Any]:
        """Record every step, then publish; 503 leaves nothing accepted."""
        wid = str(uuid.uuid4())
        flow, start = self.parse(body, wid)
        steps = flow.steps
        # A workflow's steps are submits like any other: they take from the same bucket.
        await take_submit_tokens(self.records.client, self.settings, user, count=len(steps))
        held = {s.task_id: s.sub.due_at for s, _ in start.messages if s.sub.due_at is not None}
        ids = [s.task_id for s in steps]
        now = time.time()
        try:
            await self._save(user, wid, flow, now, max(held.values(), default=now) - now)
            rows = [
                {"task_id": s.task_id, "task": s.sub.spec.name, "queue": s.sub.queue,
                 "workflow_id": wid, **({"eta": held.get(s.task_id)} if held else {})}
                for s in steps
            ]  # fmt: skip
            max_active = self.settings.max_active
            common = pending_common(now)
            codes = await self.acceptor.batch.create(user, common, rows, now, max_active)
            refused = [code for code in codes if code != CREATED]
            if refused:
                await self._discard(
                    user, wid, [t for t, c in zip(ids, codes, strict=True) if c == CREATED]
                )
                raise create_error(refused[0], str(max_active).encode(), max_active)
            try:
                wait = max(held.values(), default=now) - now
                await self._set_chord_sizes(start.chord_sizes, self._lifetime(flow, wait))
                await self._publish(start.messages, held)
            except (BrokerUnavailable, RedisError):
                await self._discard(user, wid, ids)
                raise
        except RedisError as exc:
            raise store_unavailable(exc) from exc
        # Accepted now; if this fails, the records are the truth and clients catch up from them.
        with contextlib.suppress(RedisError):
            await self.acceptor.batch.announce(user, [pending_snapshot(common, r) for r in rows])
        self.acceptor.count([s.sub for s in steps])
        return {"workflow_id": wid, "kind": flow.kind, "task_ids": ids, "tree": tree_of(flow.root)}

    async def _publish(
        self, messages: Sequence[tuple[Step, TaskMessage]], held: dict[str, float]
    ) -> None:
        """The delayed messages into the hold, then the others to the broker; if the broker
        refuses, the held ones are taken back."""
        later = [m for _, m in messages if m.task_id in held]
        hold = DelayedQueue(self.records.client, self.keys, held)
        await hold.publish(later)
        try:
            now = [m for _, m in messages if m.task_id not in held]
            if now:
                await self.acceptor.broker.publish(now)
        except (BrokerUnavailable, RedisError):
            if later:
                with contextlib.suppress(RedisError):
                    await hold.take_back([m.task_id for m in later])
            raise

    async def _save(self, user: str, wid: str, flow: Workflow, now: float, wait: float) -> None:
        key = self.keys.workflow(wid)
        ttl = self._lifetime(flow, wait)
        async with self.records.client.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={
                    "owner": user,
                    "kind": flow.kind,
                    "task_ids": orjson.dumps([s.task_id for s in flow.steps]),
                    "tree": orjson.dumps(tree_of(flow.root)),
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

    def _lifetime(self, flow: Workflow, wait: float) -> int:
        """Seconds the workflow's keys live: longer than its children, which expire
        retention_s after they end (every step at its longest, after the longest delay)."""
        settings = self.settings
        steps = len(flow.steps)
        return settings.retention_s + int(settings.time_limit) * steps + int(wait) + 3600

    async def _set_chord_sizes(self, sizes: dict[str, int], ttl: int) -> None:
        # As celery.backends.redis.RedisBackend.set_chord_size, with the backend's key prefix,
        # but living as long as the workflow (a day, as Celery's, could end before the header).
        if not sizes:
            return
        client = self.backend.client()
        async with client.pipeline(transaction=True) as pipe:
            for group_id, size in sizes.items():
                prefix = self.keys.chord_meta(group_id)
                pipe.delete(f"{prefix}.c")
                pipe.set(f"{prefix}.s", size, ex=ttl)
            await pipe.execute()

    async def _load(self, user: str, wid: Any) -> dict[bytes, bytes]:
        if not isinstance(wid, str) or len(wid) > 64:
            raise NotFound("no such workflow")
        raw = cast(dict[bytes, bytes], await self.records.client.hgetall(self.keys.workflow(wid)))
        if not raw or raw.get(b"owner", b"").decode() != user:
            raise NotFound("no such workflow")
        return raw

    async def snapshot(self, user: str, wid: Any) -> dict[str, Any]:
        raw = await self._load(user, wid)
        ids: list[str] = orjson.loads(raw[b"task_ids"])
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
        mean = round(sum(c["percent"] for c in children) / len(children), 3)
        call = percent_call(self.keys, wid, mean)
        shown = float(await self._percent(keys=call.keys, args=call.args))
        return {
            "workflow_id": wid,
            "kind": raw[b"kind"].decode(),
            "status": rollup_status([c["status"] for c in children]),
            "seq": sum(int(c["seq"]) for c in children),
            "percent": shown,
            "children": children,
            "tree": orjson.loads(raw[b"tree"]) if b"tree" in raw else None,
            "created_at": float(raw[b"created_at"]),
        }

    async def cancel(self, user: str, wid: Any) -> dict[str, Any]:
        """Cancel every task of the workflow, nested ones too."""
        raw = await self._load(user, wid)
        for tid in orjson.loads(raw[b"task_ids"]):
            await self.cancel_task(user, tid)
        return await self.snapshot(user, wid)


def rollup_status(statuses: list[str]) -> str:
    """The workflow's status from its children's. A child whose record expired (retention)
    says nothing about how it ended, so it is left out when others say more."""
    known = [s for s in statuses if s != "EXPIRED"]
    statuses = known or statuses
    if all(s == "COMPLETED" for s in statuses):
        return "COMPLETED"
    if all(s in TERMINAL_NAMES or s == "EXPIRED" for s in statuses):
        return next((sev for sev in _SEVERITY if sev in statuses), "FAILED")
    if any(s in ("RUNNING", "RETRYING") or s in TERMINAL_NAMES for s in statuses):
        return "RUNNING"
    return "PENDING"
