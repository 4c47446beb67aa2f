"""The trace of a run (``shared.tracing``): ``ctx.trace_id``, the run's span and what its log
lines name.

A run's trace is its record's ``trace_id`` (the gateway's or the producer's, or the one its
adoption started), else its message's ``traceparent``; the run span hangs under the span the
message names as parent (the task's publish span, ``tracing.span_id_of``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson

from shared import logs, tracing
from shared.headers import TRACE_HEADER
from shared.registry import TaskSpec
from shared.tracing import TraceParent, new_trace, parse_traceparent
from worker.adopt import header


def message_trace(request: Any) -> TraceParent | None:
    """The trace a message's ``traceparent`` header names (the gateway's, the producer's, or
    OpenTelemetry's Celery instrumentation's), or ``None``."""
    try:
        return parse_traceparent(header(request, TRACE_HEADER))
    except ValueError:
        return None


def run_trace(request: Any, snapshot: bytes | None) -> TraceParent:
    """The trace a run belongs to: its record's ``trace_id`` (``snapshot``: the record as the
    run's start left it), else its message's, else a new one; the parent is the span the
    message names (the task's publish), if any."""
    message = message_trace(request)
    recorded = None
    if snapshot:
        try:
            recorded = orjson.loads(snapshot).get("trace_id")
        except (orjson.JSONDecodeError, AttributeError):
            recorded = None
    if isinstance(recorded, str) and len(recorded) == 32:
        if message is not None and message.trace_id == recorded:
            return message
        return TraceParent(recorded)
    return message or new_trace()


def message_trace_id(request: Any) -> str | None:
    """The trace id of a message's ``traceparent`` header, or ``None`` (adoption starts one)."""
    trace = message_trace(request)
    return trace.trace_id if trace is not None else None


@contextmanager
def traced_run(
    spec: TaskSpec, task_id: str, trace: TraceParent, owner: str | None
) -> Iterator[None]:
    """The run of a task: its log lines name it, its trace and (where known) its owner; with
    OpenTelemetry, inside a ``run`` span."""
    attributes = {"taskgate.task_id": task_id, "taskgate.task": spec.name}
    with (
        logs.bound(task_id=task_id, trace_id=trace.trace_id, user=owner),
        tracing.span("run", trace, attributes=attributes),
    ):
        yield
