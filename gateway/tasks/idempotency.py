"""Idempotency keys: one task per (user, key), the same answer for the same body.

A submit with ``idempotency_key`` claims the key for the task id it is about to create (``SET
NX`` of ``task_id|body-hash|claimed-at``). Then:

- the same key and body again get that task's snapshot; another body gets 409;
- a submit that finds the key claimed but the task not yet written (a concurrent identical
  submit still in flight) waits for it, up to ``IN_FLIGHT_WAIT_S``, and answers the same task;
- a create that is refused (429, 503, 422) releases the claim, so a retry after the refusal is
  a fresh submit, not a 409;
- the key lives as long as its task: once the task's record is gone (retention), a claim older
  than ``IN_FLIGHT_WAIT_S`` is stale and the key is claimed anew.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Mapping
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError, WatchError

from shared.errors import Conflict
from shared.records import AsyncRecords
from shared.schema import Snapshot
from shared.settings import Settings

log = logging.getLogger("taskgate.idempotency")

# How long a claim may stand without its task written: the create and publish of one submit.
IN_FLIGHT_WAIT_S = 10.0
POLL_S = 0.02


def body_digest(body: Mapping[str, Any]) -> str:
    """The SHA-256 of a body's canonical JSON (sorted keys)."""
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


class Idempotency:
    def __init__(self, settings: Settings, records: AsyncRecords) -> None:
        self.keys = settings.keys
        # Outlives the task: a record is kept retention_s after its end, and a task may run
        # up to its hard time limit after it was claimed.
        self.ttl_s = settings.retention_s + int(settings.time_limit) + 3600
        self.records = records

    @property
    def client(self) -> aioredis.Redis:
        return self.records.client

    def key(self, user: str, idempotency_key: str) -> str:
        return self.keys.idempotency(user, hashlib.sha256(idempotency_key.encode()).hexdigest())

    async def claim(
        self, user: str, idempotency_key: str, body: Mapping[str, Any], task_id: str
    ) -> Snapshot | None:
        """Claim the key for ``task_id`` (``None``), or return the task that holds it (409 if
        that was another body)."""
        body_hash = body_digest(body)
        key = self.key(user, idempotency_key)
        deadline = time.monotonic() + IN_FLIGHT_WAIT_S
        while True:
            value = f"{task_id}|{body_hash}|{time.time():.3f}"
            if await self.client.set(key, value, nx=True, ex=self.ttl_s):
                return None
            raw = await self.client.get(key)
            if raw is None:
                continue  # released or expired a moment ago: claim it
            text = raw.decode() if isinstance(raw, bytes) else raw
            other_id, other_hash, claimed_at = _parse(text)
            if other_hash != body_hash:
                raise Conflict("idempotency key was already used with a different body")
            snap = await self.records.snapshot(other_id, user)
            if snap is not None:
                return snap
            if time.time() - claimed_at > IN_FLIGHT_WAIT_S:
                # The task it named is gone (its retention passed): the key is free again.
                await self._replace(key, raw, value)
                continue
            if time.monotonic() > deadline:
                raise Conflict("idempotency key is being used by a concurrent request; retry")
            await asyncio.sleep(POLL_S)

    async def _replace(self, key: str, old: bytes | str, new: str) -> None:
        """Swap a stale claim for ours, unless someone changed it meanwhile."""
        async with self.client.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(key)
                if await pipe.get(key) == old:
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.delete(key)
                    await pipe.execute()
            except WatchError:
                pass

    async def release(self, user: str, idempotency_key: str, task_id: str) -> None:
        """Give the key up again (its task was not accepted), if it is still ``task_id``'s."""
        key = self.key(user, idempotency_key)
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                await pipe.watch(key)
                raw = await pipe.get(key)
                text = (raw.decode() if isinstance(raw, bytes) else raw) or ""
                if text.partition("|")[0] == task_id:
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.delete(key)
                    await pipe.execute()
        except (RedisError, WatchError):
            log.exception("could not release an idempotency key of %s", user)


def _parse(text: str) -> tuple[str, str, float]:
    """``task_id|body-hash|claimed-at``; claims written before the time was added have none
    (they count as old)."""
    parts = text.split("|")
    claimed = 0.0
    if len(parts) > 2:
        try:
            claimed = float(parts[2])
        except ValueError:
            claimed = 0.0
    return parts[0], parts[1] if len(parts) > 1 else "", claimed
