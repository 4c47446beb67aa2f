"""Accepting tasks: records first, then the broker; a refusal leaves nothing accepted.

Two pipelines, chosen by the broker:

- with the Redis broker on the records' Redis (the default, ``OutboxBroker``), one script run
  per chunk writes the records, pushes the messages (with their outbox copies) and publishes the
  PENDING updates, atomically; the runs are streamed over one connection (``ScriptRuns``);
- otherwise the records are written while the messages are built, then every message goes out
  in one broker push and the updates in one publish.

``Acceptor`` also creates the single record of an idempotent submit and takes it back when the
broker refuses. It takes no submit tokens: its callers have.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple, cast

import orjson
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeout

from gateway.broker.message import TaskMessage
from gateway.broker.outbox import OutboxBroker
from gateway.broker.redis_broker import Broker
from gateway.broker.sent_events import AnnouncingOutbox
from gateway.process import gctune
from gateway.tasks.delayed import DelayedQueue, delays
from gateway.tasks.submission import Submission, build_messages, new_records, shared_trace
from shared.errors import BrokerUnavailable, RateLimited, StoreUnavailable, TaskgateError
from shared.keys import new_task_ids
from shared.records import AsyncRecords, CreateCode, new_record_fields
from shared.records_batch import (
    CHUNK,
    BatchRecords,
    chunks,
    pending_common,
    pending_snapshot,
)
from shared.schema import Snapshot
from shared.settings import Settings
from shared.store_errors import store_errors, store_unavailable
from shared.tracing import enabled as tracing_enabled
from shared.tracing import finished, span_id_of
from shared.webhooks import webhook_fields

log = logging.getLogger("taskgate.accept")

# The create scripts' answers (shared/lua/create.lua, create_batch.lua).
CREATED = CreateCode.CREATED
AT_QUOTA = CreateCode.AT_QUOTA


def create_error(code: int, payload: bytes, max_active: int) -> TaskgateError:
    """The client error for a create script's refusal ``code``."""
    if code == AT_QUOTA:
        return RateLimited(
            f"too many active tasks (limit {max_active})",
            retry_after=1.0,
            details={"active": int(payload)},
        )
    # EXISTS: the id was taken, which only a create retried after a lost reply can meet.
    return StoreUnavailable(f"task store did not confirm the create (code {code}); retry")


class NewTasks(NamedTuple):
    """One accept: whose, what, the new ids, what the records share, and when."""

    user: str
    subs: Sequence[Submission]
    ids: list[str]
    common: dict[str, Any]
    now: float


# Stands in for a body's answer until its chunk is through.
_NOT_PARSED = TaskgateError("not processed")


class Background:
    """Steps that outlive the request that started them (a discard after a timeout)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Awaitable[None]) -> None:
        async def guarded() -> None:
            try:
                await coro
            except Exception:
                log.exception("background step failed")

        task = asyncio.create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class Acceptor:
    """Writes records and publishes messages for submissions whose tokens are taken."""

    def __init__(
        self,
        settings: Settings,
        records: AsyncRecords,
        batch: BatchRecords,
        broker: Broker,
        background: Background,
    ) -> None:
        self.settings = settings
        self.records = records
        self.batch = batch
        self.broker = broker
        self.background = background
        # Tasks accepted by this process, by name (exported as a Prometheus counter).
        self.accepted: Counter[str] = Counter()

    def count(self, subs: Sequence[Submission]) -> None:
        for sub in subs:
            self.accepted[sub.spec.name] += 1

    async def create_one(self, user: str, sub: Submission, task_id: str) -> bytes:
        """Write one PENDING record (the idempotent path); its snapshot, JSON-encoded."""
        extra = webhook_fields(sub.callback_url) or {}
        if sub.due_at is not None:
            extra["eta"] = sub.due_at
        if sub.trace is not None:
            extra["trace_id"] = sub.trace.trace_id
        fields = new_record_fields(task_id, sub.spec.name, sub.queue, time.time(), extra or None)
        code, payload = await self.records.create(user, fields, self.settings.max_active)
        if code != CREATED:
            raise create_error(code, payload, self.settings.max_active)
        return payload

    async def accept(self, user: str, subs: Sequence[Submission]) -> list[Snapshot | TaskgateError]:
        """Record and publish valid submissions; one answer each, in order. If the broker
        refuses, nothing is accepted (``BrokerUnavailable``)."""
        if not subs:
            return []
        now = time.time()
        ids = new_task_ids(len(subs))
        # What all records share is sent once; per record only what differs. The tasks of one
        # request share its trace; a group of single submits names one each.
        common = pending_common(now, shared_trace(subs), ambient=False)
        new = NewTasks(user, subs, ids, common, now)
        later = [i for i, sub in enumerate(subs) if sub.due_at is not None]
        if later:
            return await self._accept_with_delayed(new, later)
        return await self._accept_now(new)

    async def _accept_now(self, new: NewTasks) -> list[Snapshot | TaskgateError]:
        if isinstance(self.broker, OutboxBroker):
            return await self._accept_inline(new)
        return await self._accept_apart(new, self.broker)

    def delayed_queue(self, subs: Sequence[Submission], ids: Sequence[str]) -> DelayedQueue:
        """Where the messages of delayed submissions wait until due (``tasks.delayed``)."""
        return DelayedQueue(self.records.client, self.settings.keys, delays(subs, ids))

    async def _accept_with_delayed(
        self, new: NewTasks, later: list[int]
    ) -> list[Snapshot | TaskgateError]:
        """The delayed submissions' records are written and their messages held until due;
        the others go as usual. Answers in the submissions' order."""
        user, subs, ids, common, now = new

        def part(idx: list[int]) -> NewTasks:
            return NewTasks(user, [subs[i] for i in idx], [ids[i] for i in idx], common, now)

        held_set = set(later)
        now_idx = [i for i in range(len(subs)) if i not in held_set]
        held = part(later)
        queue = self.delayed_queue(held.subs, held.ids)
        answers = dict(zip(later, await self._accept_apart(held, queue), strict=True))
        if now_idx:
            try:
                answers.update(zip(now_idx, await self._accept_now(part(now_idx)), strict=True))
            except BrokerUnavailable:
                # The whole call answers 503: take the held part back too (it never reached
                # the broker), so nothing of it is accepted.
                try:
                    await queue.take_back(held.ids)
                    await self.records.discard_many(user, held.ids)
                except RedisError:
                    log.exception("could not take back %d delayed tasks", len(held.ids))
                raise
        return [answers[i] for i in range(len(subs))]

    async def _accept_apart(self, new: NewTasks, broker: Broker) -> list[Snapshot | TaskgateError]:
        """Records, then one broker push, then one publish (a broker apart from the records)."""
        user, subs, ids, common, now = new
        with gctune.paused():
            records = new_records(subs, ids, "trace_id" not in common)
            snaps = [cast(Snapshot, pending_snapshot(common, r)) for r in records]
        creating = asyncio.ensure_future(
            self.batch.create(user, common, records, now, self.settings.max_active)
        )
        try:
            with store_errors():
                messages = await self._messages(subs, ids)
                codes = await creating
        finally:
            if not creating.done():
                creating.cancel()
                await asyncio.gather(creating, return_exceptions=True)
        out, accepted = self._answers(codes, snaps)
        if accepted:
            try:
                await broker.publish([messages[i] for i in accepted])
                self._traced([subs[i] for i in accepted], [ids[i] for i in accepted], new.now)
            except (BrokerUnavailable, RedisError) as exc:
                with contextlib.suppress(RedisError):
                    await self.records.discard_many(user, [ids[i] for i in accepted])
                if isinstance(exc, BrokerUnavailable):
                    raise
                raise store_unavailable(exc) from exc
            try:
                await self.batch.announce(user, [snaps[i] for i in accepted])
            except RedisError:
                log.warning("%d tasks accepted; PENDING updates not published", len(accepted))
        self.count([subs[i] for i in accepted])
        return out

    async def _accept_inline(self, new: NewTasks) -> list[Snapshot | TaskgateError]:
        """One script run per chunk writes its records, messages, outbox copies and PENDING
        updates (``_write_inline``)."""
        user, subs, ids, common, now = new
        parts = ((subs[p], ids[p], common) for p in chunks(len(subs)))
        return await self._write_inline(user, now, parts, count=len(subs))

    @property
    def streams(self) -> bool:
        """Whether ``accept_streamed`` can take a batch (the Redis broker on the records'
        Redis: one script run per chunk)."""
        return isinstance(self.broker, OutboxBroker)

    async def accept_streamed(
        self, user: str, bodies: Sequence[Any], parse: Callable[[Any], Submission]
    ) -> list[Snapshot | TaskgateError]:
        """Parse and accept ``bodies`` a chunk at a time: chunk k+1 is parsed and built while
        Redis runs chunk k. One answer per body, in order: a body ``parse`` refuses gets its
        error in its place and the others go on, as with ``accept`` after parsing them all.

        For immediate, unkeyed submits with no submit bucket to take from (the caller checks:
        the tokens of a bucket are taken for all valid items before the first write, so their
        count must be known first; keyed and delayed items take other paths) and ``streams``.
        Each chunk's records share what its own submissions share (``shared_trace``). A
        failure once chunks went out takes back every record sent, as ``accept`` does."""
        now = time.time()
        ids = new_task_ids(len(bodies))
        out: list[Snapshot | TaskgateError] = [_NOT_PARSED] * len(bodies)
        placed: list[int] = []

        def parts() -> Iterator[tuple[list[Submission], list[str], dict[str, Any]]]:
            for part in chunks(len(bodies)):
                subs: list[Submission] = []
                with gctune.paused():
                    for i in range(part.start, part.stop):
                        try:
                            subs.append(parse(bodies[i]))
                        except TaskgateError as exc:
                            out[i] = exc
                            continue
                        placed.append(i)
                if subs:
                    common = pending_common(now, shared_trace(subs), ambient=False)
                    yield subs, [ids[i] for i in placed[-len(subs) :]], common

        written = await self._write_inline(user, now, parts(), count=len(bodies))
        for i, answer in zip(placed, written, strict=True):
            out[i] = answer
        return out

    async def _write_inline(
        self,
        user: str,
        now: float,
        parts: Iterable[tuple[Sequence[Submission], Sequence[str], dict[str, Any]]],
        *,
        count: int,
    ) -> list[Snapshot | TaskgateError]:
        """One script run per part (its submissions, ids and the fields their records share,
        at most ``CHUNK``) writes its records, messages, outbox copies and PENDING updates.
        The runs are streamed over one connection (``ScriptRuns``): part k+1 is taken from
        ``parts`` and built while Redis runs part k, and Redis runs them in order (each sees
        the quota the one before left). The first part should be small, so Redis starts early
        (``chunks``). ``count``: how many submissions ``parts`` holds at most (``chunks`` of
        that many is how many runs there can be; a lone run goes as ``EVALSHA``)."""
        assert isinstance(self.broker, OutboxBroker)
        max_active = self.settings.max_active
        snaps: list[Snapshot] = []
        all_subs: list[Submission] = []
        all_ids: list[str] = []
        # Kept only to announce them as Celery task-sent events (gateway.broker.sent_events).
        announcing = isinstance(self.broker, AnnouncingOutbox)
        sent: list[TaskMessage] = []
        stream = self.batch.runs(sum(1 for _ in chunks(count)))
        try:
            async with stream:
                try:
                    for subs, ids, common in parts:
                        with gctune.paused():
                            records = new_records(subs, ids, "trace_id" not in common)
                            chunk = [cast(Snapshot, pending_snapshot(common, r)) for r in records]
                            messages = build_messages(subs, ids)
                            inline = self.broker.inline(messages, [orjson.dumps(c) for c in chunk])
                            if announcing:
                                sent.extend(messages)
                            args = self.batch.create_args(
                                user, common, records, now, max_active, inline
                            )
                        snaps.extend(chunk)
                        all_subs.extend(subs)
                        all_ids.extend(ids)
                        await stream.send(args)
                except RedisError:
                    raise
                except Exception:
                    # Building a later part failed (a streamed batch parses as it goes) after
                    # earlier ones went out: once their runs are through, take them back too.
                    if all_ids:
                        with contextlib.suppress(RedisError):
                            await stream.replies()
                        with contextlib.suppress(RedisError):
                            await self.records.discard_many(user, all_ids)
                    raise
                codes = [int(c) for reply in await stream.replies() for c in reply]
        except RedisError as exc:
            # A chunk sent may have run, whatever its reply: take every record sent back (a
            # message without its record is never run). Redis that does not answer would only
            # hold the 503 up for another timeout: then the discard goes on in the background.
            discard = self.records.discard_many(user, all_ids)
            if isinstance(exc, RedisTimeout):
                self.background.spawn(discard)
            else:
                with contextlib.suppress(RedisError):
                    await discard
            raise store_unavailable(exc) from exc
        out, accepted = self._answers(codes, snaps)
        self._traced([all_subs[i] for i in accepted], [all_ids[i] for i in accepted], now)
        if announcing:
            cast(AnnouncingOutbox, self.broker).announce([sent[i] for i in accepted], now)
        self.count([all_subs[i] for i in accepted])
        return out

    def _traced(self, subs: Sequence[Submission], ids: Sequence[str], since: float) -> None:
        """Each published task's publish span (``shared.tracing``), from the accept's start: its
        id is the one the message names as the run's parent. Nothing without OpenTelemetry."""
        if not tracing_enabled():
            return
        finished(
            "publish",
            (
                (
                    sub.trace,
                    span_id_of(tid),
                    {"taskgate.task_id": tid, "taskgate.task": sub.spec.name},
                )
                for sub, tid in zip(subs, ids, strict=True)
                if sub.trace is not None
            ),
            int(since * 1e9),
        )

    async def _messages(self, subs: Sequence[Submission], ids: list[str]) -> list[TaskMessage]:
        """The Celery messages, built a chunk at a time with a turn of the loop in between (so
        a record writer running meanwhile can send its next chunk)."""
        messages: list[TaskMessage] = []
        for start in range(0, len(subs), CHUNK):
            if start:
                await asyncio.sleep(0)
            with gctune.paused():
                messages.extend(
                    build_messages(subs[start : start + CHUNK], ids[start : start + CHUNK])
                )
        return messages

    def _answers(
        self, codes: list[int], snaps: list[Snapshot]
    ) -> tuple[list[Snapshot | TaskgateError], list[int]]:
        """Each record's answer, and the positions of the records that were created."""
        out: list[Snapshot | TaskgateError] = []
        accepted: list[int] = []
        limit = self.settings.max_active
        for i, (code, snap) in enumerate(zip(codes, snaps, strict=True)):
            if code == CREATED:
                accepted.append(i)
                out.append(snap)
            else:
                out.append(create_error(code, str(limit).encode(), limit))
        return out, accepted

    async def discard(self, user: str, task_id: str) -> None:
        """Take back a record whose message the broker refused."""
        try:
            await self.records.discard(user, task_id)
        except RedisError:
            log.exception("could not discard record of refused task %s", task_id)
