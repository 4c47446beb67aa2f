"""Idempotency keys: one task per (user, key), the same answer for the same body.

A submit with ``idempotency_key`` claims the key for the task id it is about to create (``SET
NX`` of ``task_id|body-hash``, kept ``TASKGATE_RETENTION_S``). A second submit with the key and
the same body gets the first task's snapshot; with another body, 409.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from shared.errors import Conflict
from shared.records import AsyncRecords
from shared.schema import Snapshot
from shared.settings import Settings

log = logging.getLogger("taskgate.idempotency")


def body_digest(body: Mapping[str, Any]) -> str:
    """The SHA-256 of a body's canonical JSON (sorted keys)."""
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


class Idempotency:
    def __init__(self, settings: Settings, records: AsyncRecords) -> None:
        self.keys = settings.keys
        self.retention_s = settings.retention_s
        self.records = records

    @property
    def client(self) -> aioredis.Redis:
        return self.records.client

    def key(self, user: str, idempotency_key: str) -> str:
        return self.keys.idempotency(user, hashlib.sha256(idempotency_key.encode()).hexdigest())

    async def claim(
        self, user: str, idempotency_key: str, body: Mapping[str, Any], task_id: str
    ) -> Snapshot | None:
        """Claim the key for ``task_id``; if it was taken, return that task (or 409)."""
        body_hash = body_digest(body)
        key = self.key(user, idempotency_key)
        value = f"{task_id}|{body_hash}"
        if await self.client.set(key, value, nx=True, ex=self.retention_s):
            return None
        raw = await self.client.get(key)
        if raw is None:
            raise Conflict("idempotency key is being used by a concurrent request; retry")
        other_id, _, other_hash = (raw.decode() if isinstance(raw, bytes) else raw).partition("|")
        if other_hash != body_hash:
            raise Conflict("idempotency key was already used with a different body")
        snap = await self.records.snapshot(other_id, user)
        if snap is None:
            raise Conflict("idempotency key refers to a task that no longer exists")
        return snap

    async def release(self, user: str, idempotency_key: str) -> None:
        """Give the key up again (its task was not accepted)."""
        try:
            await self.client.delete(self.key(user, idempotency_key))
        except RedisError:
            log.exception("could not release an idempotency key of %s", user)
