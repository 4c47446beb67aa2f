"""What the worker-side tests that drive records directly share: the records on the session's
real Redis, and a task already RUNNING."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from shared.records import SyncRecords, new_record_fields
from shared.settings import Settings
from shared.status import TaskStatus


@pytest.fixture
def records(env: dict[str, str]) -> Iterator[SyncRecords]:
    settings = Settings.from_env(env)
    assert settings.redis_url is not None
    client = redis.Redis.from_url(settings.redis_url)
    try:
        yield SyncRecords(client, settings.keys, settings.retention_s)
    finally:
        client.close()


def running_task(records: SyncRecords, owner: str = "coalesce") -> str:
    """A new task of ``owner``, moved to RUNNING."""
    task_id = str(uuid.uuid4())
    records.create(owner, new_record_fields(task_id, "demo.count", "fast", time.time()), 0)
    assert records.transition(task_id, "status", status=TaskStatus.RUNNING).applied
    return task_id
