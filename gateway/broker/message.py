"""Celery task messages, protocol 2, built without Celery (so publishing never blocks).

The layout follows ``celery.app.amqp.AMQP.as_task_v2``; a test checks that an unmodified
``celery worker`` consumes what this module builds. ``TaskMessage`` is ``shared``'s
(``shared.task_message``: the producer holds delayed messages in it too); the gateway's modules
take it from here.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import orjson

from shared.headers import RECORDED_HEADER, TRACE_HEADER
from shared.task_message import TaskMessage as TaskMessage

_ORIGIN = f"taskgate@{socket.gethostname()}:{os.getpid()}"
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


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
    traceparent: str | None = None,
) -> TaskMessage:
    """A protocol-2 message; ``timelimit`` is Celery's ``(hard, soft)`` in seconds (``None``:
    the worker's default); ``traceparent``: the W3C header (``shared.tracing``)."""
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
        RECORDED_HEADER: True,
    }
    if traceparent is not None:
        headers[TRACE_HEADER] = traceparent
    body = orjson.dumps([args, kwargs, embed or _EMBED])
    return TaskMessage(task_id, task, queue, priority, headers, body)
