"""Celery-native messages: a message that reaches a worker with no taskgate record gets one.

Teams call Celery from Python (``send_task``, ``.delay()``, a canvas, beat, a task starting
another); those messages carry no record. When a worker takes one for a registered task, the
record is written here, atomically (``create.lua``: a concurrent adoption of the same id finds
it and does nothing), owned by the message header ``taskgate_user`` when present, else by
``TASKGATE_SERVICE_USER``, in the trace its ``traceparent`` header names, else in a new one;
then the task runs like any other. A message for a name that is not
registered ends ``FAILED`` with ``error.type`` ``UnknownTask`` (recorded, logged, counted).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from shared.headers import HEADER_USER, MAX_OWNER_LEN
from shared.headers import RECORDED_HEADER as RECORDED_HEADER
from shared.records import CREATE_LUA, CreateCode, SyncRecords, create_call, new_record_fields
from shared.settings import Settings
from shared.tracing import new_trace

log = logging.getLogger("taskgate.worker")


def header(request: Any, name: str) -> Any:
    """A custom message header, wherever this Celery version puts it on the request."""
    value = getattr(request, name, None)
    if value is None:
        headers = getattr(request, "headers", None) or {}
        value = headers.get(name) if isinstance(headers, dict) else None
    return value


def owner_of(headers_or_request: Any, settings: Settings) -> str:
    """Who owns an adopted message: its ``taskgate_user`` header if it is a sensible user id,
    else the service user."""
    if isinstance(headers_or_request, dict):
        raw = headers_or_request.get(HEADER_USER)
    else:
        raw = header(headers_or_request, HEADER_USER)
    if isinstance(raw, str) and 0 < len(raw) <= MAX_OWNER_LEN:
        try:
            raw.encode("utf-8")
        except UnicodeEncodeError:
            return settings.service_user
        return raw
    return settings.service_user


def adopt(
    store: SyncRecords,
    task_id: str,
    name: str,
    queue: str,
    owner: str,
    settings: Settings,
    trace_id: str | None = None,
) -> bool:
    """Write the PENDING record of a message that has none, in trace ``trace_id`` (``None``: a
    new one); False if one appeared meanwhile (another delivery adopted it first: the record
    decides what happens next)."""
    fields = new_record_fields(
        task_id, name, queue, time.time(), {"trace_id": trace_id or new_trace().trace_id}
    )
    call = create_call(store.keys, owner, fields, 0, settings.retention_s)
    script = store.client.register_script(CREATE_LUA)
    code, _ = script(keys=call.keys, args=call.args)
    created = int(code) == CreateCode.CREATED
    if created:
        log.info("task %s (%s) sent without taskgate: adopted for %s", task_id, name, owner)
    return created


def queue_of(request: Any, default: str) -> str:
    """The queue a message came from (its routing key), else the task's default queue."""
    info = getattr(request, "delivery_info", None) or {}
    routed = info.get("routing_key") if isinstance(info, dict) else None
    return routed if isinstance(routed, str) and routed else default
