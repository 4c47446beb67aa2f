"""Records for many tasks at once: the batch path (``POST /api/tasks/batch``, the SDK's batches).

One script run creates up to ``CHUNK`` records (instead of one run per record, each re-sending
the field names). With the Redis broker on the records' Redis, the same run also pushes their
messages, keeps the outbox copies and publishes their PENDING updates; otherwise another run
publishes the updates once the broker took the messages. The updates are built here, from what
was written, not read back. The per-record rules are those of ``create.lua``: a record that
exists is not overwritten, and the user's ``max_active`` quota is checked (here once for the
chunk, then counted down) by the same rule (``quota.lua``: ids of records gone are dropped
before a refusal, and the user's indexes are trimmed to the retention). The script is
``shared/lua/create_batch.lua``; its header gives the KEYS and ARGV that
``BatchRecords.create_args`` builds, and its codes are ``CreateCode``.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from shared.keys import Keys
from shared.records import CreateCode, new_record_fields, update_bytes, updates_head
from shared.resp import Arg, Pipeline, pack_args
from shared.schema import SNAPSHOT_FIELDS
from shared.scripts import ScriptCall, source
from shared.tracing import request_trace

CHUNK = 1000
# The first run of a streamed batch (``chunks``): small, so Redis starts on it while the
# caller builds the rest.
FIRST_CHUNK = 250

# The scripts' text (``shared/lua/``), read at import: never as blocking I/O on a loop.
CREATE_MANY_LUA = source("create_batch.lua")
_CREATE_MANY_SHA = hashlib.sha1(CREATE_MANY_LUA.encode()).hexdigest()
PUBLISH_MANY_LUA = source("publish_many.lua")


def chunks(n: int) -> Iterator[slice]:
    """The runs of a streamed batch of ``n``: ``FIRST_CHUNK``, then ``CHUNK`` at a time."""
    start, size = 0, FIRST_CHUNK
    while start < n:
        yield slice(start, min(n, start + size))
        start, size = start + size, CHUNK


class ScriptRuns:
    """Runs of one script sent back to back over the shared pipelined connection
    (``shared.resp.Pipeline``), each as soon as the caller has built it; ``replies`` reads
    theirs, in order.

    Redis runs the commands of one connection in the order they were sent, so each run sees
    everything the one before did (the quota it left, the ids it created), as if they had been
    awaited one by one, while the caller builds run k+1 during Redis's work on run k: a
    pipeline whose commands are not all known when it starts.

    A lone run (``single``: a group of submits, a small batch) goes as ``EVALSHA``, and again
    as ``EVAL`` if Redis no longer has the script (NOSCRIPT: it did not run). Runs of a longer
    stream always go as ``EVAL``: after a NOSCRIPT the later runs could have run before the
    earlier one was sent again. The source is a few KiB against the megabyte of arguments of a
    full run. A run is a ``ScriptCall`` (its KEYS and ARGV; a plain sequence is ARGV alone).
    """

    def __init__(self, pipe: Pipeline, source: str, sha: str, *, single: bool) -> None:
        self._pipe = pipe
        self._eval = pack_args(["EVAL", source])
        self._head = pack_args(["EVALSHA", sha]) if single else self._eval
        self._single = single
        self._sent: list[tuple[asyncio.Future[Any], bytes, int]] = []
        self._read = 0

    @property
    def sent(self) -> int:
        return len(self._sent)

    async def __aenter__(self) -> ScriptRuns:
        return self

    async def send(self, run: ScriptCall | Sequence[Arg]) -> None:
        """Send one run, its KEYS and ARGV (a plain sequence: ARGV, no KEYS), written at once;
        the socket buffers what Redis has not read yet."""
        if self._single and self._sent:
            raise RuntimeError("a single run was announced")
        keys, args = (run.keys, run.args) if isinstance(run, ScriptCall) else ((), run)
        body = pack_args([len(keys), *keys, *args])
        count = 3 + len(keys) + len(args)
        fut = await self._pipe.send([b"*%d\r\n" % count, self._head, body])
        self._sent.append((fut, body, count))

    async def replies(self) -> list[Any]:
        """The reply of every run sent and not yet read, in order; the first error reply is
        raised (``ResponseError``), as are connection errors and timeouts."""
        out = []
        while self._read < len(self._sent):
            fut, body, count = self._sent[self._read]
            try:
                reply = await self._pipe.reply(fut)
            except NoScriptError:
                if not self._single:
                    raise
                again = [b"*%d\r\n" % count, self._eval, body]
                reply = await self._pipe.reply(await self._pipe.send(again))
            out.append(reply)
            self._read += 1
        return out

    async def __aexit__(self, *exc: object) -> None:
        # Replies not read (an error, a cancellation) are dropped when they arrive; the
        # connection stays in step.
        for fut, _, _ in self._sent[self._read :]:
            fut.cancel()


class BatchRecords:
    def __init__(
        self, client: aioredis.Redis, keys: Keys, retention_s: int, pipe: Pipeline
    ) -> None:
        self.client = client
        self.keys = keys
        self.retention_s = retention_s
        self.pipe = pipe
        self._publish = client.register_script(PUBLISH_MANY_LUA)

    def runs(self, count: int) -> ScriptRuns:
        """A stream of ``count`` ``create_args`` runs (``ScriptRuns``): ``async with``, ``send``
        each chunk as it is built, then ``replies`` (one list of codes per run)."""
        return ScriptRuns(self.pipe, CREATE_MANY_LUA, _CREATE_MANY_SHA, single=count == 1)

    def create_args(
        self,
        owner: str,
        common: dict[str, Any],
        varying: Sequence[dict[str, Any]],
        created: float,
        max_active: int,
        inline: InlinePush | None = None,
    ) -> ScriptCall:
        """One run's KEYS and ARGV (``create_batch.lua``'s header): a record per ``varying``
        dict (each with ``task_id`` and the same keys; at most ``CHUNK``), all with the
        ``common`` fields too; with ``inline`` (its entries in the same order), each created
        record's message is pushed and its PENDING update published in the same run."""
        assert 0 < len(varying) <= CHUNK
        # A field null in every record of the run is left out: absent reads as null, and each
        # field stored costs Redis a ziplist insert per record (a null webhook was 4% of a run).
        names = [n for n in varying[0] if any(rec[n] is not None for rec in varying)]
        keys = self.keys
        outbox = inline.outbox if inline is not None else keys.outbox
        call = ScriptCall(
            [
                keys.user_tasks(owner),
                keys.user_active(owner),
                keys.task_prefix,
                keys.progress_channel,
                outbox,
                keys.user_ended(owner),
            ],
            [owner, repr(created), max_active, self.retention_s],
        )
        args = call.args
        args.append(len(common))
        for name, value in common.items():
            args.extend((name, orjson.dumps(value)))
        args.extend((len(names), *names))
        if inline is None:
            args.append(0)
        else:
            args.extend((1, repr(inline.at), updates_head(owner)))
        # The lists and time indexes the records name, each once in KEYS; a record gives
        # their (1-based) index.
        index: dict[str, int] = {}

        def key_index(key: str) -> int:
            at = index.get(key)
            if at is None:
                call.keys.append(key)
                at = index[key] = len(call.keys)
            return at

        for i, rec in enumerate(varying):
            args.append(rec["task_id"])
            args.extend([orjson.dumps(rec[n]) for n in names])
            if inline is not None:
                list_key, envelope, since, snapshot = inline.entries[i]
                args.extend((key_index(list_key), envelope, key_index(since), snapshot))
        return call

    async def create(
        self,
        owner: str,
        common: dict[str, Any],
        varying: Sequence[dict[str, Any]],
        created: float,
        max_active: int,
    ) -> list[int]:
        """Create one record per ``varying`` dict (``create_args``), ``CHUNK`` per run, the
        runs streamed over one connection. One ``CreateCode`` per record."""
        async with self.runs(-(-len(varying) // CHUNK)) as runs:
            for start in range(0, len(varying), CHUNK):
                part = varying[start : start + CHUNK]
                await runs.send(self.create_args(owner, common, part, created, max_active))
            return [CreateCode(int(c)) for codes in await runs.replies() for c in codes]

    async def announce(self, owner: str, snapshots: Sequence[Mapping[str, Any]]) -> None:
        """Publish the PENDING update of each new record (``pending_snapshot``), in order, one
        script run per ``CHUNK``: no per-record read back, no per-update command."""
        updates = pending_updates(owner, snapshots)
        for start in range(0, len(updates), CHUNK):
            call = publish_many_call(self.keys, updates[start : start + CHUNK])
            await self._publish(keys=call.keys, args=call.args)


def publish_many_call(keys: Keys, updates: Sequence[bytes]) -> ScriptCall:
    """``publish_many.lua``'s KEYS and ARGV (see its header)."""
    return ScriptCall([keys.progress_channel], list(updates))


@dataclass(frozen=True, slots=True)
class InlinePush:
    """The broker part of ``BatchRecords.create_args`` (Redis broker on the records' Redis):
    the outbox hash (``Keys.outbox``), the publish time, and per record (its list, from
    ``Keys.broker_queues``; its envelope; its outbox time index, ``Keys.outbox_times``; its
    PENDING snapshot JSON)."""

    outbox: str
    at: float
    entries: Sequence[tuple[str, bytes, str, bytes]]


def pending_updates(owner: str, snapshots: Sequence[Mapping[str, Any]]) -> list[bytes]:
    """The progress-channel update of each snapshot, as workers' scripts publish it."""
    return [update_bytes(owner, orjson.dumps(s)) for s in snapshots]


def pending_common(
    created: float, trace_id: str | None = None, *, ambient: bool = True
) -> dict[str, Any]:
    """The fields every new PENDING record starts with, but for its own id, task and queue,
    and those that are null (a field never stored reads as null). ``trace_id``: the trace they
    all belong to (``shared.tracing``), else (``ambient``) that of the request being handled,
    if any (a workflow's steps)."""
    fields = new_record_fields("", "", "", created)
    common = {
        name: value
        for name, value in fields.items()
        if value is not None and name not in ("task_id", "task", "queue")
    }
    if trace_id is None and ambient:
        request = request_trace()
        trace_id = request.trace_id if request is not None else None
    if trace_id is not None:
        common["trace_id"] = trace_id
    return common


def pending_snapshot(common: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """The snapshot a freshly created record has (seq 1), without asking Redis."""
    snap = {name: record.get(name, common.get(name)) for name in SNAPSHOT_FIELDS}
    snap["seq"] = 1
    return snap
