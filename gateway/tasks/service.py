"""The task manager: the one object behind the HTTP API and the Socket.IO events.

It validates a submission, writes the record, publishes the Celery message, and answers reads,
lists and cancels, always on behalf of one user: another user's task is indistinguishable from
an unknown one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard, cast

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeout

from gateway.process import gctune
from gateway.broker.redis_broker import MAX_PRIORITY, Broker
from gateway.broker.message import TaskMessage, build_task_message
from gateway.tasks.coalesce import Coalescer
from gateway.tasks.control import CeleryControl
from gateway.inprocess_config import ManagerConfig
from gateway.tasks.ratelimit import grant_submit_tokens, take_submit_tokens
from gateway.broker.outbox import OutboxBroker
from gateway.live.relay import Relay
from shared.errors import (
    BadRequest,
    BrokerUnavailable,
    Conflict,
    InvalidInput,
    NotFound,
    RateLimited,
    ResultTimeout,
    TaskgateError,
)
from shared.keys import new_task_ids
from shared.records import AsyncRecords, decode_snapshot, new_record_fields
from shared.records_batch import (
    CHUNK,
    BatchRecords,
    chunks,
    pending_common,
    pending_snapshot,
)
from shared.redis_client import async_client
from shared.registry import TaskSpec, get_task, load_task_modules
from shared.resp import DEFAULT_TIMEOUT_S, Pipeline
from shared.schema import Snapshot, Update
from shared.settings import Settings
from shared.status import TERMINAL_NAMES, TaskStatus
from shared.webhooks import WebhookPolicy, WebhookRefused, webhook_fields

if TYPE_CHECKING:
    from gateway.tasks.workflows import Workflows

log = logging.getLogger("taskgate.manager")

SUBMIT_FIELDS = frozenset({"task", "input", "queue", "priority", "idempotency_key", "callback_url"})
_TASK_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
RECENT_S = 600.0
MAX_LIST = 500
MAX_BATCH = 10_000
RESULT_POLL_S = 1.0
_IDEM_MAX = 200

# Stands in for an item's answer until the batch is through.
_PENDING_ITEM = TaskgateError("not processed")


@dataclass(frozen=True, slots=True)
class Submission:
    spec: TaskSpec
    input: dict[str, Any]
    queue: str
    priority: int
    idempotency_key: str | None
    callback_url: str | None = None


def _field_error(field: str, reason: str) -> InvalidInput:
    return InvalidInput(f"{field} {reason}", details={"field": field, "reason": reason})


def parse_submission(
    body: Any, routes: Sequence[tuple[str, str]] = (), webhooks: WebhookPolicy | None = None
) -> Submission:
    """Check a submit body against the contract and the task's schema; raise ``InvalidInput``."""
    if not isinstance(body, dict):
        raise _field_error("body", "must be a JSON object")
    # Routing, scheduling, serializer, headers, links and ids are the server's to choose: any
    # option beyond the contract's is refused rather than ignored.
    extra = sorted(str(k)[:64] for k in body if k not in SUBMIT_FIELDS)
    if extra:
        raise InvalidInput(
            f"{extra[0]} is not an accepted option",
            details={
                "field": extra[0],
                "reason": "is not an accepted option",
                "accepted": sorted(SUBMIT_FIELDS),
            },
        )
    if "task" not in body:
        raise _field_error("task", "is required")
    spec = get_task(body.get("task"))
    data = spec.schema.validate(body.get("input"))
    allowed = spec.allowed_queues(routes)
    queue = body.get("queue", allowed[0])
    if queue not in allowed:
        raise _field_error("queue", f"must be one of {', '.join(allowed)} for {spec.name}")
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
    callback = body.get("callback_url")
    if callback is not None:
        try:
            (webhooks or WebhookPolicy()).check_url(callback)
        except WebhookRefused as exc:
            raise _field_error("callback_url", str(exc)) from None
    return Submission(spec, data, queue, priority, key, callback)


def _batch_body(item: Any) -> Any:
    """Batch items may say ``input_data`` (the older managers' name) for ``input``."""
    if isinstance(item, Mapping) and "input_data" in item and "input" not in item:
        item = {("input" if k == "input_data" else k): v for k, v in item.items()}
    return item


def _build_messages(subs: Sequence[Submission], ids: Sequence[str]) -> list[TaskMessage]:
    return [
        build_task_message(tid, sub.spec.name, sub.queue, kwargs=sub.input, priority=sub.priority)
        for sub, tid in zip(subs, ids, strict=True)
    ]


def _new_records(subs: Sequence[Submission], ids: Sequence[str]) -> list[dict[str, Any]]:
    """What differs between new records: id, task, queue and webhook."""
    return [
        {
            "task_id": tid,
            "task": s.spec.name,
            "queue": s.queue,
            "webhook": (webhook_fields(s.callback_url) or {"webhook": None})["webhook"],
        }
        for s, tid in zip(subs, ids, strict=True)
    ]


def valid_task_id(task_id: object) -> TypeGuard[str]:
    return isinstance(task_id, str) and _TASK_ID.match(task_id) is not None


class TaskManager:
    """Submit, read, list and cancel tasks for a user. Safe to share across requests."""

    def __init__(
        self,
        settings: Settings,
        records: AsyncRecords,
        broker: Broker,
        control: CeleryControl | None = None,
        config: ManagerConfig | None = None,
    ) -> None:
        load_task_modules(settings.task_modules)
        self.settings = settings
        self.records = records
        # The accept runs take their own pipelined connection to the records' Redis, with the
        # records client's timeout (shared/resp.py).
        timeout = records.client.connection_pool.connection_kwargs.get("socket_timeout")
        self.pipe = Pipeline(settings.require_redis(), timeout or DEFAULT_TIMEOUT_S)
        self.batch = BatchRecords(records.client, settings.keys, settings.retention_s, self.pipe)
        self.broker = broker
        self.control = control
        self.config = config or ManagerConfig.from_env()
        self.webhook_policy = WebhookPolicy.from_settings(settings)
        self.relay: Relay | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._waiters: dict[str, list[asyncio.Future[Snapshot]]] = defaultdict(list)
        # Tasks accepted by this process, by name (exported as a Prometheus counter).
        self.accepted: Counter[str] = Counter()
        self._owned: list[Callable[[], Awaitable[None]]] = []
        self._backend: aioredis.Redis | None = None
        self._workflows: Workflows | None = None
        self.submit_groups: Coalescer[Submission, Snapshot] = Coalescer(self._accept_group)

    @classmethod
    async def connect(
        cls,
        settings: Settings | None = None,
        config: ManagerConfig | Mapping[str, Any] | None = None,
    ) -> TaskManager:
        """A manager for use inside any asyncio program (no HTTP server needed).

        It opens its own Redis and broker connections and listens for updates, so
        ``execute_task`` returns as soon as the task ends. Call ``close()`` when done.
        """
        from gateway.broker.factory import make_broker

        settings = settings or Settings.from_env()
        if isinstance(config, Mapping):
            config = ManagerConfig.from_mapping(config)
        client = async_client(settings.require_redis(), socket_timeout=3.0)
        records = AsyncRecords(client, settings.keys, settings.retention_s)
        broker = make_broker(settings)
        manager = cls(settings, records, broker, CeleryControl(settings), config)
        relay = Relay(
            settings.require_redis(),
            settings.keys.progress_channel,
            manager.deliver_update,
        )
        manager.relay = relay
        listener = asyncio.create_task(relay.run(), name="taskgate-manager-relay")

        async def stop() -> None:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
            await broker.close()
            await client.aclose()

        manager._owned.append(stop)
        return manager

    async def backend_client(self) -> aioredis.Redis:
        """A client of Celery's result backend (the records' Redis unless configured apart)."""
        url = self.settings.effective_backend_url
        if url is None or url == self.settings.redis_url:
            return self.records.client
        if self._backend is None:
            self._backend = async_client(url, socket_timeout=3.0)
            self._owned.append(self._backend.aclose)
        return self._backend

    async def deliver_update(self, update: Update) -> None:
        self.notify(update["snapshot"])

    @property
    def waiting(self) -> bool:
        """Whether any ``wait_result`` is waiting for a task to end."""
        return bool(self._waiters)

    def notify(self, snap: Snapshot) -> None:
        """Wake whoever waits for this task's end (called by the relay for every update)."""
        if snap["status"] in TERMINAL_NAMES:
            for fut in self._waiters.pop(snap["task_id"], []):
                if not fut.done():
                    fut.set_result(snap)

    async def wait_result(self, user: str, task_id: object, timeout: float) -> Snapshot:
        """The task's terminal snapshot; ``ResultTimeout`` if it has not ended in ``timeout``."""
        if not valid_task_id(task_id):
            raise NotFound("no such task")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        while True:
            # Registered before the read, so an end that lands during it is not missed; the
            # poll covers an update pub/sub lost. The read checks the owner before any
            # notified snapshot is handed out.
            fut: asyncio.Future[Snapshot] = loop.create_future()
            self._waiters[task_id].append(fut)
            try:
                snap = await self.get(user, task_id)
                if snap["status"] in TERMINAL_NAMES:
                    return snap
                remaining = deadline - loop.time()
                if remaining > 0:
                    await asyncio.wait((fut,), timeout=min(remaining, RESULT_POLL_S))
                if fut.done():
                    return fut.result()
                if remaining <= 0:
                    raise ResultTimeout(
                        f"task has not ended after {timeout:g}s", details={"task_id": task_id}
                    )
            finally:
                waiting = self._waiters.get(task_id)
                if waiting is not None and fut in waiting:
                    waiting.remove(fut)
                    if not waiting:
                        del self._waiters[task_id]

    async def submit(self, user: str, body: Any) -> Snapshot:
        """Accept one task: record first, then the broker. 503 leaves nothing accepted.

        Submits in flight together are accepted as one group (``gateway.tasks.coalesce``)."""
        sub = parse_submission(body, self.settings.routes, self.webhook_policy)
        if sub.idempotency_key is not None:
            return await self._submit_idempotent(user, body, sub)
        return await self.submit_groups.submit(user, sub)

    async def _submit_idempotent(self, user: str, body: Any, sub: Submission) -> Snapshot:
        await take_submit_tokens(self.records.client, self.settings, user)
        task_id = str(uuid.uuid4())
        try:
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
        self.accepted[sub.spec.name] += 1
        return decode_snapshot(snap)

    async def _accept_group(
        self, user: str, subs: list[Submission]
    ) -> list[Snapshot | TaskgateError]:
        """The coalescer's writer: as many of ``subs`` as the user's bucket grants."""
        granted, limited = await grant_submit_tokens(
            self.records.client, self.settings, user, len(subs)
        )
        out: list[Snapshot | TaskgateError] = await self._accept(user, subs[:granted])
        if limited is not None:
            out.extend(limited for _ in subs[granted:])
        return out

    async def _accept(
        self, user: str, subs: Sequence[Submission]
    ) -> list[Snapshot | TaskgateError]:
        """Record and publish valid submissions (tokens already taken); one answer each, in
        order. If the broker refuses, nothing is accepted (``BrokerUnavailable``).

        With the Redis broker on the records' Redis (the default), one script run per chunk
        writes the records, pushes the messages (with their outbox copies) and publishes the
        PENDING updates, atomically. Otherwise the records are written while the messages are
        built, then every message goes out in one broker push and the updates in one publish.
        """
        if not subs:
            return []
        now = time.time()
        ids = new_task_ids(len(subs))
        # What all records share is sent once; per record only what differs.
        common = pending_common(now)
        if isinstance(self.broker, OutboxBroker):
            return await self._accept_inline(user, subs, ids, common, now)
        with gctune.paused():
            records = _new_records(subs, ids)
            snaps = [cast(Snapshot, pending_snapshot(common, r)) for r in records]
        creating = asyncio.ensure_future(
            self.batch.create(user, common, records, now, self.settings.max_active)
        )
        try:
            messages = await self._messages(subs, ids)
            codes = await creating
        except RedisError as exc:
            raise BrokerUnavailable(f"task store unreachable: {type(exc).__name__}") from exc
        finally:
            if not creating.done():
                creating.cancel()
                await asyncio.gather(creating, return_exceptions=True)
        out, accepted = self._answers(codes, snaps)
        if accepted:
            try:
                await self.broker.publish([messages[i] for i in accepted])
            except (BrokerUnavailable, RedisError) as exc:
                with contextlib.suppress(RedisError):
                    await self.records.discard_many(user, [ids[i] for i in accepted])
                if isinstance(exc, BrokerUnavailable):
                    raise
                raise BrokerUnavailable(f"task store unreachable: {type(exc).__name__}") from exc
            try:
                await self.batch.announce(user, [snaps[i] for i in accepted])
            except RedisError:
                log.warning("%d tasks accepted; PENDING updates not published", len(accepted))
        for i in accepted:
            self.accepted[subs[i].spec.name] += 1
        return out

    async def _accept_inline(
        self,
        user: str,
        subs: Sequence[Submission],
        ids: list[str],
        common: dict[str, Any],
        now: float,
    ) -> list[Snapshot | TaskgateError]:
        """One script run per chunk writes its records, messages, outbox copies and PENDING
        updates. The runs are streamed over one connection (``ScriptRuns``): chunk k+1 is
        built while Redis runs chunk k, and Redis runs them in order (each sees the quota the
        one before left). The first chunk is small, so Redis starts early (``chunks``)."""
        assert isinstance(self.broker, OutboxBroker)
        max_active = self.settings.max_active
        snaps: list[Snapshot] = []
        parts = list(chunks(len(subs)))
        runs = self.batch.runs(len(parts))
        try:
            async with runs:
                for part in parts:
                    with gctune.paused():
                        records = _new_records(subs[part], ids[part])
                        chunk = [cast(Snapshot, pending_snapshot(common, r)) for r in records]
                        messages = _build_messages(subs[part], ids[part])
                        inline = self.broker.inline(messages, [orjson.dumps(c) for c in chunk])
                        args = self.batch.create_args(
                            user, common, records, now, max_active, inline
                        )
                    snaps.extend(chunk)
                    await runs.send(args)
                codes = [int(c) for reply in await runs.replies() for c in reply]
        except RedisError as exc:
            # A chunk sent may have run, whatever its reply: take every record sent back (a
            # message without its record is never run). Redis that does not answer would only
            # hold the 503 up for another timeout: then the discard goes on in the background.
            discard = self.records.discard_many(user, ids[: len(snaps)])
            if isinstance(exc, RedisTimeout):
                self._spawn(discard)
            else:
                with contextlib.suppress(RedisError):
                    await discard
            raise BrokerUnavailable(f"task store unreachable: {type(exc).__name__}") from exc
        out, accepted = self._answers(codes, snaps)
        for i in accepted:
            self.accepted[subs[i].spec.name] += 1
        return out

    async def _messages(self, subs: Sequence[Submission], ids: list[str]) -> list[TaskMessage]:
        """The Celery messages, built a chunk at a time with a turn of the loop in between (so
        a record writer running meanwhile can send its next chunk)."""
        messages: list[TaskMessage] = []
        for start in range(0, len(subs), CHUNK):
            if start:
                await asyncio.sleep(0)
            with gctune.paused():
                messages.extend(
                    _build_messages(subs[start : start + CHUNK], ids[start : start + CHUNK])
                )
        return messages

    def _answers(
        self, codes: list[int], snaps: list[Snapshot]
    ) -> tuple[list[Snapshot | TaskgateError], list[int]]:
        """Each record's answer, and the positions of the records that were created."""
        out: list[Snapshot | TaskgateError] = []
        accepted: list[int] = []
        for i, (code, snap) in enumerate(zip(codes, snaps, strict=True)):
            if code == 1:
                accepted.append(i)
                out.append(snap)
            else:
                out.append(self._create_error(code, str(self.settings.max_active).encode()))
        return out, accepted

    @property
    def workflows(self) -> Workflows:
        if self._workflows is None:
            from gateway.tasks.workflows import Workflows

            self._workflows = Workflows(self)
        return self._workflows

    async def submit_any(self, user: str, body: Any) -> dict[str, Any]:
        """A task or a workflow (a body with ``chain``, ``group`` or ``chord``): the ack."""
        if isinstance(body, dict) and body.keys() & {"chain", "group", "chord"}:
            return await self.workflows.submit(user, body)
        snap = await self.submit(user, body)
        return {"task_id": snap["task_id"], "status": snap["status"], "seq": snap["seq"]}

    async def submit_many(self, user: str, bodies: Any) -> list[Snapshot | TaskgateError]:
        """Accept a batch: each item validated on its own, answered in order.

        Valid items are accepted together (``_accept``): all of them take their tokens at once
        (or the batch gets 429), and if the broker refuses, nothing of the batch is accepted.
        """
        if not isinstance(bodies, list) or not 0 < len(bodies) <= MAX_BATCH:
            raise _field_error("tasks", f"must be a list of 1 to {MAX_BATCH} tasks")
        out: list[Snapshot | TaskgateError] = []
        plain: list[tuple[int, Submission]] = []
        keyed: list[tuple[int, Any]] = []
        with gctune.paused():
            for i, body in enumerate(bodies):
                try:
                    sub = parse_submission(body, self.settings.routes, self.webhook_policy)
                except TaskgateError as exc:
                    out.append(exc)
                    continue
                out.append(_PENDING_ITEM)
                if sub.idempotency_key is None:
                    plain.append((i, sub))
                else:
                    keyed.append((i, body))
        for i, body in keyed:
            # Rare in batches; the single path gives the same dedup guarantees.
            try:
                out[i] = await self.submit(user, body)
            except BrokerUnavailable:
                raise
            except TaskgateError as exc:
                out[i] = exc
        if plain:
            await take_submit_tokens(self.records.client, self.settings, user, count=len(plain))
            answers = await self._accept(user, [sub for _, sub in plain])
            for (i, _), answer in zip(plain, answers, strict=True):
                out[i] = answer
        return out

    async def _create(self, user: str, sub: Submission, task_id: str) -> bytes:
        fields = new_record_fields(
            task_id, sub.spec.name, sub.queue, time.time(), webhook_fields(sub.callback_url)
        )
        code, payload = await self.records.create(user, fields, self.settings.max_active)
        if code != 1:
            raise self._create_error(code, payload)
        return payload

    def _create_error(self, code: int, payload: bytes) -> TaskgateError:
        if code == -3:
            return RateLimited(
                f"too many active tasks (limit {self.settings.max_active})",
                retry_after=1.0,
                details={"active": int(payload)},
            )
        return TaskgateError(f"could not create task record (code {code})")

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
        if result.code == 3 and self.control is not None:
            self._spawn(self.control.revoke(task_id))
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
        await self.submit_groups.close()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self.pipe.close()
        for stop in self._owned:
            await stop()
        self._owned.clear()

    # -- The in-process API (the methods teams know from hand-written Celery managers) --------

    def _user(self, context: Mapping[str, Any] | None) -> str:
        user = (context or {}).get("user_id") or (context or {}).get("user")
        return str(user) if user else self.config.default_user

    async def execute_task(
        self,
        task_name: str,
        input_data: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
    ) -> Snapshot:
        """Submit, then wait for the end: the terminal snapshot (``status``, ``result``,
        ``error``). Raises ``ResultTimeout`` after ``task_timeout_seconds``; the task keeps
        running (cancel it with ``cancel_task`` if that is what you want)."""
        body: dict[str, Any] = {"task": task_name, "input": dict(input_data or {})}
        if queue is not None:
            body["queue"] = queue
        if priority is not None:
            body["priority"] = priority
        user = self._user(context)
        snap = await self.submit(user, body)
        return await self.wait_result(user, snap["task_id"], self.config.task_timeout_seconds)

    async def execute_heavy_task(
        self,
        task_name: str,
        input_data: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> Snapshot:
        """``execute_task`` on the ``heavy`` queue (the task must allow it)."""
        return await self.execute_task(task_name, input_data, context, queue="heavy")

    async def execute_dsl_task_step(
        self,
        step: Mapping[str, Any],
        input_data: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> Snapshot:
        """Run one DSL step ``{"task": name, "parameters": {...}}``: its parameters, overlaid
        with ``input_data``, are the task's input."""
        if not isinstance(step, Mapping) or not isinstance(step.get("task"), str):
            raise _field_error("step.task", "must name a task")
        params = step.get("parameters") or {}
        if not isinstance(params, Mapping):
            raise _field_error("step.parameters", "must be an object")
        extra = set(step) - {"task", "parameters", "queue", "priority"}
        if extra:
            raise _field_error(f"step.{sorted(extra)[0]}", "is not an accepted option")
        return await self.execute_task(
            step["task"],
            {**params, **(input_data or {})},
            context,
            queue=step.get("queue"),
            priority=step.get("priority"),
        )

    async def batch_execute_tasks(
        self, tasks: Sequence[Mapping[str, Any]], context: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Run many tasks and wait for all: one entry per task, in order, each the terminal
        snapshot or ``{"error": {...}}``. Submitted ``batch_size`` at a time, at most
        ``rate_limit_requests_per_second``; one failure does not sink the rest."""
        user = self._user(context)
        loop = asyncio.get_running_loop()
        out: list[dict[str, Any]] = [{} for _ in tasks]
        waits: list[tuple[int, asyncio.Task[Snapshot]]] = []
        # Chunks fit the user's submit bucket (TASKGATE_SUBMIT_RATE), so none is refused whole.
        server_rate = self.settings.submit_rate
        size = self.config.batch_size
        rate = self.config.rate_limit_requests_per_second
        if server_rate > 0:
            size = max(1, min(size, int(server_rate)))
            rate = min(rate, server_rate)
        for start in range(0, len(tasks), size):
            began = loop.time()
            chunk = [_batch_body(t) for t in tasks[start : start + size]]
            try:
                answers: list[Snapshot | TaskgateError] = await self.submit_many(user, chunk)
            except TaskgateError as exc:
                answers = [exc] * len(chunk)
            for offset, answer in enumerate(answers):
                i = start + offset
                if isinstance(answer, TaskgateError):
                    out[i] = answer.to_dict()
                else:
                    wait = self.wait_result(
                        user, answer["task_id"], self.config.task_timeout_seconds
                    )
                    waits.append((i, asyncio.ensure_future(wait)))
            # Pace: a chunk of n may start only n / rate seconds after the previous one.
            pause = len(chunk) / rate - (loop.time() - began)
            if pause > 0 and start + size < len(tasks):
                await asyncio.sleep(pause)
        for i, waiter in waits:
            try:
                out[i] = dict(await waiter)
            except TaskgateError as exc:
                out[i] = exc.to_dict()
        return out

    async def get_task_result(
        self, task_id: str, context: Mapping[str, Any] | None = None, wait: float = 0.0
    ) -> Snapshot:
        """The task's snapshot now, or (``wait`` > 0) once it ended, up to ``wait`` seconds."""
        user = self._user(context)
        if wait > 0:
            return await self.wait_result(user, task_id, wait)
        return await self.get(user, task_id)

    async def cancel_task(self, task_id: str, context: Mapping[str, Any] | None = None) -> Snapshot:
        return await self.cancel(self._user(context), task_id)

    async def get_queue_info(self) -> dict[str, Any]:
        """Depth of every configured queue (messages waiting in the broker)."""
        depths = await self.broker.queue_depths(self.settings.queues)
        return {"queues": [{"name": q, "depth": depths.get(q, 0)} for q in self.settings.queues]}

    async def get_worker_stats(self) -> dict[str, Any]:
        """Workers that answered a Celery inspect, with queues, active task ids and counters."""
        if self.control is None:
            return {"workers": []}
        return {"workers": await self.control.workers()}

    async def get_system_health(self) -> dict[str, Any]:
        """Redis, broker, relay and workers, each ``ok`` or what is wrong."""
        checks: dict[str, Any] = {}
        try:
            async with asyncio.timeout(3.0):
                await self.records.client.ping()
            checks["redis"] = "ok"
        except (RedisError, OSError, TimeoutError) as exc:
            checks["redis"] = f"unreachable: {type(exc).__name__}"
        try:
            await self.broker.ping()
            checks["broker"] = "ok"
        except BrokerUnavailable as exc:
            checks["broker"] = exc.message
        if self.relay is not None:
            checks["relay"] = "ok" if self.relay.connected.is_set() else "reconnecting"
        try:
            workers = (await self.get_worker_stats())["workers"]
            checks["workers"] = len(workers)
        except (TimeoutError, OSError) as exc:
            checks["workers"] = f"unknown: {type(exc).__name__}"
        ok = all(checks.get(k, "ok") == "ok" for k in ("redis", "broker", "relay"))
        return {"status": "ok" if ok else "degraded", **checks}
