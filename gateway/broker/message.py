"""Celery task messages, protocol 2, built without Celery (so publishing never blocks).

The layout follows ``celery.app.amqp.AMQP.as_task_v2``; a test checks that an unmodified
``celery worker`` consumes what this module builds.
"""

from __future__ import annotations

import base64
import os
import socket
from dataclasses import dataclass
from typing import Any

import orjson

_ORIGIN = f"taskgate@{socket.gethostname()}:{os.getpid()}"
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


@dataclass(frozen=True, slots=True)
class TaskMessage:
    """One task message: the Celery headers and the JSON body ``[args, kwargs, embed]``."""

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


def build_task_message(
    task_id: str,
    task: str,
    queue: str,
    *,
    args: list[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    priority: int = 0,
    embed: dict[str, Any] | None = None,
    parent_id: str | None = None,
    root_id: str | None = None,
    group_id: str | None = None,
    group_index: int | None = None,
    timelimit: tuple[float | None, float | None] = (None, None),
    expires: str | None = None,
) -> TaskMessage:
    """A protocol-2 message; ``timelimit`` is Celery's ``(hard, soft)`` in seconds (``None``:
    the worker's default)."""
    args = args or []
    kwargs = kwargs or {}
    headers: dict[str, Any] = {
        "lang": "py",
        "task": task,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": expires,
        "group": group_id,
        "group_index": group_index,
        "retries": 0,
        "timelimit": list(timelimit),
        "root_id": root_id or task_id,
        "parent_id": parent_id,
        "argsrepr": repr(args)[:1024],
        "kwargsrepr": repr(kwargs)[:1024],
        "origin": _ORIGIN,
        "ignore_result": False,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
        # Written by taskgate with its record first: a worker never adopts such a message
        # without one (its record was discarded after a refused publish, or expired).
        "taskgate_record": True,
    }
    body = orjson.dumps([args, kwargs, embed or _EMBED])
    return TaskMessage(task_id, task, queue, priority, headers, body)
