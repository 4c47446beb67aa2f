"""One Celery task message (protocol 2) as taskgate publishes and holds it: a ``TaskMessage``.

The gateway builds them without Celery (``gateway.broker.message``) and publishes them
(``gateway.broker``); delayed ones wait in Redis in this shape until due
(``shared.delayed_layout``), whether the gateway or the producer (``shared.producer``) put them
there.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class TaskMessage:
    """One task message: the Celery headers and the JSON body ``[args, kwargs, embed]``;
    ``priority`` is taskgate's (``shared.priority``), not the broker's."""

    task_id: str
    task: str
    queue: str
    priority: int
    headers: dict[str, Any]
    body: bytes

    def redis_envelope(self, broker_priority: int) -> bytes:
        """The kombu Redis transport's JSON envelope, as ``LPUSH``-ed onto the queue list."""
        return orjson.dumps(
            {
                "body": base64.b64encode(self.body).decode(),
                "content-encoding": "utf-8",
                "content-type": "application/json",
                "headers": self.headers,
                "properties": {
                    "correlation_id": self.task_id,
                    "reply_to": "",
                    "delivery_mode": 2,
                    "delivery_info": {"exchange": "", "routing_key": self.queue},
                    "priority": broker_priority,
                    "body_encoding": "base64",
                    # kombu keys its un-acked set by this tag; a task id is unique per message.
                    "delivery_tag": self.task_id,
                },
            }
        )
