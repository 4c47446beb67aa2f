"""How a delayed task's message is kept in Redis until due: one layout, one writer.

The hold is two keys (``shared.keys``): ``Keys.delayed``, task ids scored by when they are due,
and ``Keys.delayed_messages``, task id -> the message packed here: a JSON object of the task id,
the task's name, its queue, taskgate's priority, the Celery headers and the body (JSON text).
The gateway's accept path and the producer (``shared.producer``) pack; the gateways' mover
(``gateway.tasks.delayed``) unpacks and publishes when due.
"""

from __future__ import annotations

import orjson

from shared.task_message import TaskMessage


def pack(message: TaskMessage) -> bytes:
    """``message`` as it waits in ``Keys.delayed_messages``."""
    return orjson.dumps(
        {
            "task_id": message.task_id,
            "task": message.task,
            "queue": message.queue,
            "priority": message.priority,
            "headers": message.headers,
            "body": message.body.decode(),
        }
    )


def unpack(raw: bytes) -> TaskMessage:
    """The message ``pack`` wrote."""
    data = orjson.loads(raw)
    return TaskMessage(
        data["task_id"],
        data["task"],
        data["queue"],
        int(data["priority"]),
        data["headers"],
        data["body"].encode(),
    )
