"""The task service: the one object behind the HTTP API, the Socket.IO events and the
in-process API.

It submits (single, grouped, batched, idempotent, workflows), reads, lists, watches, waits for
and cancels tasks, always on behalf of one user: another user's task is indistinguishable from
an unknown one. The work is done by the pieces beside it: ``submission`` (parsing),
``accept`` (records and broker), ``idempotency``, ``coalesce`` (group commit), ``ratelimit``,
``waiters``, ``workflows`` and ``control``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from typing import Any

from redis.exceptions import RedisError

from gateway.broker.redis_broker import Broker
from gateway.process import gctune
from gateway.tasks.accept import Acceptor, Background
from gateway.tasks.backend import ResultBackend
from gateway.tasks.coalesce import Coalescer
from gateway.tasks.control import CeleryControl
from gateway.tasks.idempotency import Idempotency
from gateway.tasks.ratelimit import grant_submit_tokens, take_submit_tokens
from gateway.tasks.submission import (
    IDEMPOTENCY_KEY_MAX,
    MAX_DELAY_S,
    Submission,
    build_message,
    field_error,
    parse_submission,
    valid_task_id,
)
from gateway.tasks.waiters import ResultWaiters
from gateway.tasks.workflows import Workflows
from shared.errors import BadRequest, BrokerUnavailable, NotFound, TaskgateError
from shared.records import AsyncRecords, TransitionCode, decode_snapshot
from shared.records_batch import BatchRecords
from shared.registry import check_time_limits, load_task_modules
from shared.resp import DEFAULT_TIMEOUT_S, Pipeline
from shared.schema import Snapshot
from shared.settings import Settings
from shared.status import TaskStatus
from shared.store_errors import store_errors
from shared.webhooks import WebhookPolicy

log = logging.getLogger("taskgate.tasks")

RECENT_S = 600.0
MAX_LIST = 500
MAX_BATCH = 10_000
# Items of a keyed batch submitted at once (each takes the single, idempotent path).
KEYED_IN_FLIGHT = 16

# Stands in for an item's answer until the batch is through.
_PENDING_ITEM = TaskgateError("not processed")


class TaskService:
    """Submit, read, list and cancel tasks for a user. Safe to share across requests."""

    def __init__(
        self,
        settings: Settings,
        records: AsyncRecords,
        broker: Broker,
        control: CeleryControl | None = None,
    ) -> None:
        load_task_modules(settings.task_modules)
        check_time_limits(settings.visibility_timeout)
        self.settings = settings
        self.records = records
        self.broker = broker
        self.control = control
        # The accept runs take their own pipelined connection to the records' Redis, with the
        # records client's timeout (shared/resp.py).
        timeout = records.client.connection_pool.connection_kwargs.get("socket_timeout")
        self.pipe = Pipeline(settings.require_redis(), timeout or DEFAULT_TIMEOUT_S)
        self.batch = BatchRecords(records.client, settings.keys, settings.retention_s, self.pipe)
        self.webhook_policy = WebhookPolicy.from_settings(settings)
        self.background = Background()
        self.acceptor = Acceptor(settings, records, self.batch, broker, self.background)
        self.idempotency = Idempotency(settings, records)
        self.waiters = ResultWaiters()
        self.backend = ResultBackend(settings, records.client)
        self.workflows = Workflows(settings, records, self.acceptor, self.backend, self.cancel)
        self.submit_groups: Coalescer[Submission, Snapshot] = Coalescer(self._accept_group)

    @property
    def accepted(self) -> Counter[str]:
        """Tasks accepted by this process, by name."""
        return self.acceptor.accepted

    @property
    def waiting(self) -> bool:
        """Whether any ``wait_result`` is waiting for a task to end."""
        return self.waiters.waiting

    def notify(self, snap: Snapshot) -> None:
        """Wake whoever waits for this task's end (called by the relay for every update)."""
        self.waiters.notify(snap)

    # -- Submitting ---------------------------------------------------------------------------

    async def submit(self, user: str, body: Any) -> Snapshot:
        """Accept one task: record first, then the broker. 503 leaves nothing accepted.

        Submits in flight together are accepted as one group (``gateway.tasks.coalesce``)."""
        sub = self._parse(body)
        if sub.idempotency_key is not None:
            return await self._submit_idempotent(user, body, sub)
        return await self.submit_groups.submit(user, sub)

    def _parse(self, body: Any) -> Submission:
        """A submit body checked for this deployment: its routes, webhook policy, and delays
        of at most half the records' retention (a record outlives its task's wait)."""
        return parse_submission(
            body,
            self.settings.routes,
            self.webhook_policy,
            max_delay_s=min(MAX_DELAY_S, self.settings.retention_s / 2),
        )

    async def _submit_idempotent(self, user: str, body: Any, sub: Submission) -> Snapshot:
        assert sub.idempotency_key is not None
        await take_submit_tokens(self.records.client, self.settings, user)
        task_id = str(uuid.uuid4())
        key = sub.idempotency_key
        with store_errors():
            existing = await self.idempotency.claim(user, key, body, task_id)
            if existing is not None:
                return existing
            # From here a refusal (quota, store, broker) gives the key back: a retry of the
            # same body is then a fresh submit, not a 409.
            try:
                snap = await self.acceptor.create_one(user, sub, task_id)
            except BaseException:
                await self.idempotency.release(user, key, task_id)
                raise
            message = build_message(sub, task_id)
            broker = self.broker
            if sub.due_at is not None:
                broker = self.acceptor.delayed_queue([sub], [task_id])
            try:
                await broker.publish([message])
            except BaseException:
                await self.acceptor.discard(user, task_id)
                await self.idempotency.release(user, key, task_id)
                raise
        try:
            await self.records.publish_snapshot(user, snap)
        except RedisError:
            log.warning("task %s accepted but its PENDING update was not published", task_id)
        self.acceptor.count([sub])
        return decode_snapshot(snap)

    async def _accept_group(
        self, user: str, subs: list[Submission]
    ) -> list[Snapshot | TaskgateError]:
        """The coalescer's writer: as many of ``subs`` as the user's bucket grants."""
        granted, limited = await grant_submit_tokens(
            self.records.client, self.settings, user, len(subs)
        )
        out: list[Snapshot | TaskgateError] = await self.acceptor.accept(user, subs[:granted])
        if limited is not None:
            out.extend(limited for _ in subs[granted:])
        return out

    async def submit_any(self, user: str, body: Any) -> dict[str, Any]:
        """A task or a workflow (a body with ``chain``, ``group`` or ``chord``): the ack."""
        if isinstance(body, dict) and body.keys() & {"chain", "group", "chord"}:
            return await self.workflows.submit(user, body)
        snap = await self.submit(user, body)
        return {"task_id": snap["task_id"], "status": snap["status"], "seq": snap["seq"]}

    async def submit_many(
        self, user: str, bodies: Any, idempotency_key: str | None = None
    ) -> list[Snapshot | TaskgateError]:
        """Accept a batch: each item validated on its own, answered in order.

        Valid items are accepted together (``Acceptor.accept``): all of them take their tokens
        at once (or the batch gets 429), and if the broker refuses, nothing of the batch is
        accepted. With ``idempotency_key`` each item without a key of its own is keyed
        ``<key>#<index>``, so a batch sent again after a lost answer (a gateway that died half
        way, a timeout) creates none of its tasks twice and answers the ones it has.
        """
        if not isinstance(bodies, list) or not 0 < len(bodies) <= MAX_BATCH:
            raise field_error("tasks", f"must be a list of 1 to {MAX_BATCH} tasks")
        if idempotency_key is not None and (
            not isinstance(idempotency_key, str)
            or not 0 < len(idempotency_key) <= IDEMPOTENCY_KEY_MAX - 6
        ):
            raise field_error(
                "idempotency_key",
                f"must be a string of 1 to {IDEMPOTENCY_KEY_MAX - 6} characters",
            )
        if idempotency_key is None and self._streamable(bodies):
            # Each chunk is parsed while Redis writes the one before (Acceptor.accept_streamed).
            return await self.acceptor.accept_streamed(user, bodies, self._parse)
        out: list[Snapshot | TaskgateError] = []
        plain: list[tuple[int, Submission]] = []
        keyed: list[tuple[int, Any]] = []
        with gctune.paused():
            for i, body in enumerate(bodies):
                if idempotency_key is not None and isinstance(body, dict):
                    body = {"idempotency_key": f"{idempotency_key}#{i}", **body}
                try:
                    sub = self._parse(body)
                except TaskgateError as exc:
                    out.append(exc)
                    continue
                out.append(_PENDING_ITEM)
                if sub.idempotency_key is None:
                    plain.append((i, sub))
                else:
                    keyed.append((i, body))
        if keyed:
            # The single path's guarantees, a few items at a time; a broker or store failure
            # stops the batch (items already accepted stay, and a retry answers them).
            gate = asyncio.Semaphore(KEYED_IN_FLIGHT)

            async def one(i: int, body: Any) -> None:
                async with gate:
                    try:
                        out[i] = await self.submit(user, body)
                    except BrokerUnavailable:
                        raise
                    except TaskgateError as exc:
                        out[i] = exc

            await asyncio.gather(*(one(i, body) for i, body in keyed))
        if plain:
            await take_submit_tokens(self.records.client, self.settings, user, count=len(plain))
            answers = await self.acceptor.accept(user, [sub for _, sub in plain])
            for (i, _), answer in zip(plain, answers, strict=True):
                out[i] = answer
        return out

    def _streamable(self, bodies: list[Any]) -> bool:
        """Whether a batch can be parsed as it is written (``Acceptor.accept_streamed``) with
        the answers it gets parsed whole first: no submit bucket (its tokens are taken for
        every valid item before the first write, so they must all be parsed first), the
        one-script accept, and no item that takes another path (an idempotency key, a delay:
        any batch naming one is parsed whole first, as before)."""
        if self.settings.submit_rate > 0 or not self.acceptor.streams:
            return False
        for body in bodies:
            if isinstance(body, dict) and (
                body.get("idempotency_key") is not None or "countdown" in body or "eta" in body
            ):
                return False
        return True

    # -- Reading ------------------------------------------------------------------------------

    async def get(self, user: str, task_id: object) -> Snapshot:
        if not valid_task_id(task_id):
            raise NotFound("no such task")
        snap = await self.records.snapshot(task_id, user)
        if snap is None:
            raise NotFound("no such task")
        return snap

    async def wait_result(self, user: str, task_id: object, timeout: float) -> Snapshot:
        """The task's terminal snapshot; ``ResultTimeout`` if it has not ended in ``timeout``."""
        if not valid_task_id(task_id):
            raise NotFound("no such task")
        return await self.waiters.wait(task_id, lambda: self.get(user, task_id), timeout)

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

    async def live(self, user: str) -> list[Snapshot]:
        """What a client gets on connect: tasks not ended, or ended in the last 10 minutes."""
        ids = await self.records.live_ids(user, time.time() - RECENT_S)
        return await self.records.snapshots(ids, user)

    async def watch(self, user: str, wanted: Any) -> list[Snapshot]:
        """Snapshots of the given tasks whose ``seq`` is above the one the client has."""
        if not isinstance(wanted, dict) or len(wanted) > MAX_LIST:
            raise field_error("tasks", f"must be an object of at most {MAX_LIST} task ids")
        known: dict[str, int] = {}
        for tid, seq in wanted.items():
            if isinstance(seq, bool) or not isinstance(seq, int):
                raise field_error(f"tasks.{str(tid)[:64]}", "must be an integer seq")
            if valid_task_id(tid):
                known[tid] = seq
        snaps = await self.records.snapshots(list(known), user)
        return [s for s in snaps if s["seq"] > known[s["task_id"]]]

    # -- Cancelling ---------------------------------------------------------------------------

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
        if result.code == TransitionCode.CANCEL_FLAGGED and self.control is not None:
            self.background.spawn(self.control.revoke(task_id))
        return await self.get(user, task_id)

    # -- Queues and workers -------------------------------------------------------------------

    async def queue_info(self) -> dict[str, Any]:
        """Depth of every configured queue (messages waiting in the broker)."""
        depths = await self.broker.queue_depths(self.settings.queues)
        return {"queues": [{"name": q, "depth": depths.get(q, 0)} for q in self.settings.queues]}

    async def worker_stats(self) -> dict[str, Any]:
        """Workers that answered a Celery inspect, with queues, active task ids and counters."""
        if self.control is None:
            return {"workers": []}
        return {"workers": await self.control.workers()}

    async def close(self) -> None:
        """Stop what the service started (the pipelined connection, background steps); the
        records client and the broker belong to whoever made them."""
        await self.submit_groups.close()
        await self.background.close()
        self.pipe.close()
        await self.backend.close()
