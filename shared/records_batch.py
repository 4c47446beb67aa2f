"""Records for many tasks at once: the batch path (``POST /api/tasks/batch``, the SDK's batches).

One script run creates up to ``CHUNK`` records (instead of one run per record, each re-sending
the field names). With the Redis broker on the records' Redis, the same run also pushes their
messages, keeps the outbox copies and publishes their PENDING updates; otherwise another run
publishes the updates once the broker took the messages. The updates are built here, from what
was written, not read back. The per-record rules are those of ``CREATE_LUA``: a record that
exists is not overwritten, and the user's ``max_active`` quota is checked (here once for the
chunk, then counted down).
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
from shared.records import new_record_fields, update_bytes, updates_head
from shared.resp import Arg, Pipeline, pack_args
from shared.schema import SNAPSHOT_FIELDS

CHUNK = 1000
# The first run of a streamed batch (``chunks``): small, so Redis starts on it while the
# caller builds the rest.
FIRST_CHUNK = 250

# ARGV: prefix, owner, created, max_active, retention, ncommon, then ncommon name/value pairs
# shared by every record, nvarying, the nvarying names, then the broker part: 0 (none), or 1,
# the progress channel, the outbox hash, the publish time and the head of the update message
# (``records.updates_head``). Then per record its task id and its nvarying JSON-encoded values,
# and with a broker part its queue list, its message envelope, its outbox time index and its
# PENDING snapshot. Returns one code per record: 1 created, -2 id exists, -3 over max_active.
#
# With the broker part, each created record's message is pushed, its outbox copy kept and its
# PENDING snapshot published (one message for the run, in the records' order) in the same
# atomic run: a task is accepted entirely or not at all, and no worker can report on it before
# its PENDING update is out.
#
# Redis's time per record is what bounds a large batch, so the loop allocates little: one HSET
# argument table for the whole run, its per-record values overwritten in place. A record holds
# no field that reads the same absent: no nulls (the snapshot script reads a missing field as
# null), no _pct or _cancel of 0 (as in CREATE_LUA).
CREATE_MANY_LUA = """
local prefix, owner, created = ARGV[1], ARGV[2], tonumber(ARGV[3])
local max_active, retention, nc = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local hs = {'_owner', owner, 'seq', 1}
for i = 0, nc - 1 do
  hs[#hs + 1] = ARGV[7 + 2 * i]
  hs[#hs + 1] = ARGV[8 + 2 * i]
end
local at = 7 + 2 * nc
local nv = tonumber(ARGV[at])
local slot = #hs
for i = 1, nv do
  hs[slot + 2 * i - 1] = ARGV[at + i]
  hs[slot + 2 * i] = ''
end
at = at + nv + 1
local inline = ARGV[at] == '1'
local channel, outbox, now, head = ARGV[at + 1], ARGV[at + 2], ARGV[at + 3], ARGV[at + 4]
at = at + (inline and 5 or 1)
local per = 1 + nv + (inline and 4 or 0)
local copies, pushes, lists, stamps, pending = {}, {}, {}, {}, {}
local active_key = prefix .. 'user:' .. owner .. ':active'
local tasks_key = prefix .. 'user:' .. owner .. ':tasks'
local room = 0
if max_active > 0 then room = max_active - redis.call('ZCARD', active_key) end
local codes = {}
local r = 0
local members = {}
while at <= #ARGV do
  r = r + 1
  local tid = ARGV[at]
  local base = at + nv
  local key = prefix .. 'task:' .. tid
  if max_active > 0 and room <= 0 then
    codes[r] = -3
  elseif redis.call('EXISTS', key) == 1 then
    codes[r] = -2
  else
    for i = 1, nv do hs[slot + 2 * i] = ARGV[at + i] end
    redis.call('HSET', key, unpack(hs))
    redis.call('EXPIRE', key, retention)
    members[#members + 1] = created
    members[#members + 1] = tid
    room = room - 1
    codes[r] = 1
    if inline then
      local list, envelope, since = ARGV[base + 1], ARGV[base + 2], ARGV[base + 3]
      copies[#copies + 1] = tid
      copies[#copies + 1] = list .. '\\n' .. envelope
      local z = stamps[since]
      if not z then z = {}; stamps[since] = z end
      z[#z + 1] = now
      z[#z + 1] = tid
      local l = pushes[list]
      if not l then l = {}; pushes[list] = l; lists[#lists + 1] = list end
      l[#l + 1] = envelope
      pending[#pending + 1] = ARGV[base + 4]
    end
  end
  at = at + per
end
-- One command per list and per index for the whole chunk, in the records' order.
for _, list in ipairs(lists) do redis.call('LPUSH', list, unpack(pushes[list])) end
for since, z in pairs(stamps) do redis.call('ZADD', since, unpack(z)) end
if #copies > 0 then redis.call('HSET', outbox, unpack(copies)) end
if #pending > 0 then
  redis.call('PUBLISH', channel, head .. table.concat(pending, ',') .. ']}')
end
-- One ZADD per index for the whole chunk (CHUNK keeps unpack below Lua's stack limit).
if #members > 0 then
  redis.call('ZADD', tasks_key, unpack(members))
  redis.call('ZADD', active_key, unpack(members))
end
return codes
"""

_CREATE_MANY_SHA = hashlib.sha1(CREATE_MANY_LUA.encode()).hexdigest()

# ARGV: channel, then the updates to publish on it, in order.
PUBLISH_MANY_LUA = """
for i = 2, #ARGV do redis.call('PUBLISH', ARGV[1], ARGV[i]) end
return #ARGV - 1
"""


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
    full run.
    """

    def __init__(self, pipe: Pipeline, source: str, sha: str, *, single: bool) -> None:
        self._pipe = pipe
        self._eval = pack_args(["EVAL", source, 0])
        self._head = pack_args(["EVALSHA", sha, 0]) if single else self._eval
        self._single = single
        self._sent: list[tuple[asyncio.Future[Any], bytes, int]] = []
        self._read = 0

    @property
    def sent(self) -> int:
        return len(self._sent)

    async def __aenter__(self) -> ScriptRuns:
        return self

    async def send(self, args: Sequence[Arg]) -> None:
        """Send one run (written at once; the socket buffers what Redis has not read yet)."""
        if self._single and self._sent:
            raise RuntimeError("a single run was announced")
        body = pack_args(args)
        fut = await self._pipe.send([b"*%d\r\n" % (3 + len(args)), self._head, body])
        self._sent.append((fut, body, len(args)))

    async def replies(self) -> list[Any]:
        """The reply of every run sent and not yet read, in order; the first error reply is
        raised (``ResponseError``), as are connection errors and timeouts."""
        out = []
        while self._read < len(self._sent):
            fut, body, nargs = self._sent[self._read]
            try:
                reply = await self._pipe.reply(fut)
            except NoScriptError:
                if not self._single:
                    raise
                again = [b"*%d\r\n" % (3 + nargs), self._eval, body]
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
    ) -> list[Any]:
        """One run's arguments: a record per ``varying`` dict (each with ``task_id`` and the
        same keys; at most ``CHUNK``), all with the ``common`` fields too; with ``inline``
        (its entries in the same order), each created record's message is pushed and its
        PENDING update published in the same run."""
        assert 0 < len(varying) <= CHUNK
        names = list(varying[0])
        args: list[Any] = [self.keys.prefix, owner, repr(created), max_active, self.retention_s]
        args.append(len(common))
        for name, value in common.items():
            args.extend((name, orjson.dumps(value)))
        args.extend((len(names), *names))
        if inline is None:
            args.append(0)
        else:
            args.extend(
                (1, self.keys.progress_channel, inline.outbox, repr(inline.at), updates_head(owner))
            )
        for i, rec in enumerate(varying):
            args.append(rec["task_id"])
            args.extend([orjson.dumps(rec[n]) for n in names])
            if inline is not None:
                args.extend(inline.entries[i])
        return args

    async def create(
        self,
        owner: str,
        common: dict[str, Any],
        varying: Sequence[dict[str, Any]],
        created: float,
        max_active: int,
    ) -> list[int]:
        """Create one record per ``varying`` dict (``create_args``), ``CHUNK`` per run, the
        runs streamed over one connection. One code per record."""
        async with self.runs(-(-len(varying) // CHUNK)) as runs:
            for start in range(0, len(varying), CHUNK):
                part = varying[start : start + CHUNK]
                await runs.send(self.create_args(owner, common, part, created, max_active))
            return [int(c) for codes in await runs.replies() for c in codes]

    async def announce(self, owner: str, snapshots: Sequence[Mapping[str, Any]]) -> None:
        """Publish the PENDING update of each new record (``pending_snapshot``), in order, one
        script run per ``CHUNK``: no per-record read back, no per-update command."""
        updates = pending_updates(owner, snapshots)
        channel = self.keys.progress_channel
        for start in range(0, len(updates), CHUNK):
            await self._publish(keys=[], args=[channel, *updates[start : start + CHUNK]])


@dataclass(frozen=True, slots=True)
class InlinePush:
    """The broker part of ``BatchRecords.create_args`` (Redis broker on the records' Redis):
    the outbox hash, the publish time, and per record (queue list, envelope, outbox time
    index, PENDING snapshot JSON)."""

    outbox: str
    at: float
    entries: Sequence[tuple[str, bytes, str, bytes]]


def pending_updates(owner: str, snapshots: Sequence[Mapping[str, Any]]) -> list[bytes]:
    """The progress-channel update of each snapshot, as workers' scripts publish it."""
    return [update_bytes(owner, orjson.dumps(s)) for s in snapshots]


def pending_common(created: float) -> dict[str, Any]:
    """The fields every new PENDING record starts with, but for its own id, task and queue,
    and those that are null (a field never stored reads as null)."""
    fields = new_record_fields("", "", "", created)
    return {
        name: value
        for name, value in fields.items()
        if value is not None and name not in ("task_id", "task", "queue")
    }


def pending_snapshot(common: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """The snapshot a freshly created record has (seq 1), without asking Redis."""
    snap = {name: record.get(name, common.get(name)) for name in SNAPSHOT_FIELDS}
    snap["seq"] = 1
    return snap
