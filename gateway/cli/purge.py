"""``taskgate purge QUEUE``: remove a queue's waiting messages and end their tasks ``CANCELLED``.

``celery purge`` alone deletes the messages from the broker but not taskgate's records, so each
task stays PENDING, and with the outbox (docs/RELIABILITY.md) a message whose record is not
ended counts as lost in flight and is published again: the purge is undone. Here each purged
message's record ends CANCELLED with ``error.type`` ``Purged`` (ending a record drops its
outbox copy in the same step). The messages are taken off the queue first, atomically, then
the records are ended; a purge stopped in between leaves those tasks PENDING without a message
(run it again, or cancel them). Tasks held until due (``countdown``) for that queue are purged
as well. Redis broker only.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import redis

from shared.errors import ConfigError
from shared.records import SyncRecords
from shared.redis_client import sync_client
from shared.settings import Settings
from shared.status import TaskStatus

PURGED = {"type": "Purged", "message": "removed from its queue by taskgate purge"}


def _message_id(raw: bytes) -> str | None:
    try:
        envelope: Any = orjson.loads(raw)
        task_id = envelope["headers"]["id"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return task_id if isinstance(task_id, str) else None


def purge(settings: Settings, queue: str) -> tuple[int, int]:
    """Purge ``queue``: (messages removed, records ended)."""
    if settings.broker_is_amqp:
        raise ConfigError("taskgate purge: only the Redis broker is supported (use the RabbitMQ "
                          "management tools, then cancel the tasks)")  # fmt: skip
    if queue not in settings.queues:
        raise ConfigError(f"taskgate purge: unknown queue {queue!r} (TASKGATE_QUEUES)")
    broker = sync_client(str(settings.effective_broker_url))
    store = sync_client(settings.require_redis())
    records = SyncRecords(store, settings.keys, settings.retention_s)
    keys = settings.keys
    try:
        # Taken off the lists atomically: a message pushed meanwhile is either taken or stays.
        with broker.pipeline(transaction=True) as pipe:
            for key in keys.broker_queues(queue):
                pipe.lrange(key, 0, -1)
            for key in keys.broker_queues(queue):
                pipe.delete(key)
            replies = pipe.execute()
        raws = [raw for reply in replies[: len(keys.broker_queues(queue))] for raw in reply]
        ids = [tid for tid in map(_message_id, raws) if tid is not None]
        ids += _take_delayed(store, settings, queue)
        ended = 0
        for task_id in ids:
            result = records.transition(
                task_id,
                "status",
                status=TaskStatus.CANCELLED,
                # A restored copy of a running task does not end the run.
                only_if=(TaskStatus.PENDING, TaskStatus.RETRYING),
                fields={"finished_at": time.time(), "error": PURGED},
            )
            ended += int(result.applied)
        return len(raws), ended
    finally:
        broker.close()
        store.close()


def _take_delayed(store: redis.Redis, settings: Settings, queue: str) -> list[str]:
    """The ids of ``queue``'s tasks held until due, taken out of the hold."""
    keys = settings.keys
    taken = []
    for task_id, raw in store.hgetall(keys.delayed_messages).items():
        try:
            if orjson.loads(raw).get("queue") != queue:
                continue
        except orjson.JSONDecodeError:
            continue
        tid = task_id.decode() if isinstance(task_id, bytes) else str(task_id)
        with store.pipeline(transaction=True) as pipe:
            pipe.zrem(keys.delayed, tid)
            pipe.hdel(keys.delayed_messages, tid)
            pipe.execute()
        taken.append(tid)
    return taken
