"""A submit body checked against the contract and the task's schema: a ``Submission``.

Every way in (HTTP, Socket.IO, batches, workflow steps, the in-process API) parses its bodies
here, so one body is accepted or refused the same way everywhere. ``Submission``, ``field_error``,
the queue and priority rules (``queue_and_priority``) and the timing rules (``parse_timing``) are
``shared.submission``'s, which the producer (``shared.send_options``) checks with too; the
gateway's modules import them from here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeGuard

from gateway.broker.message import TaskMessage, build_task_message
from shared.registry import get_task
from shared.submission import MAX_DELAY_S as MAX_DELAY_S
from shared.submission import Submission as Submission
from shared.submission import field_error as field_error
from shared.submission import parse_timing as parse_timing
from shared.submission import queue_and_priority, refuse_unknown, traceparent_field
from shared.tracing import TraceParent, new_trace, request_trace, span_id_of
from shared.webhooks import WebhookPolicy, WebhookRefused, webhook_fields

SUBMIT_FIELDS = frozenset(
    {
        "task",
        "input",
        "queue",
        "priority",
        "idempotency_key",
        "callback_url",
        "countdown",
        "eta",
        "expires",
        # W3C trace context (shared.tracing); HTTP callers may send the header instead.
        "traceparent",
    }
)
IDEMPOTENCY_KEY_MAX = 200
_TASK_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def parse_submission(
    body: Any,
    routes: Sequence[tuple[str, str]] = (),
    webhooks: WebhookPolicy | None = None,
    max_delay_s: float = MAX_DELAY_S,
) -> Submission:
    """Check a submit body against the contract and the task's schema; raise ``InvalidInput``.

    ``max_delay_s`` bounds ``countdown`` / ``eta`` (the service gives half the records'
    retention, so a record outlives its task's wait)."""
    if not isinstance(body, dict):
        raise field_error("body", "must be a JSON object")
    # Routing, scheduling, serializer, headers, links and ids are the server's to choose: any
    # option beyond the contract's is refused rather than ignored.
    refuse_unknown(body, SUBMIT_FIELDS)
    if "task" not in body:
        raise field_error("task", "is required")
    spec = get_task(body.get("task"))
    data = spec.schema.validate(body.get("input"))
    queue, priority = queue_and_priority(spec, routes, body)
    key = body.get("idempotency_key")
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= IDEMPOTENCY_KEY_MAX):
        raise field_error(
            "idempotency_key", f"must be a string of 1 to {IDEMPOTENCY_KEY_MAX} characters"
        )
    callback = body.get("callback_url")
    if callback is not None:
        try:
            (webhooks or WebhookPolicy()).check_url(callback)
        except WebhookRefused as exc:
            raise field_error("callback_url", str(exc)) from None
    due_at, expires_at = parse_timing(body, max_delay_s)
    trace = _trace(body.get("traceparent"))
    return Submission(spec, data, queue, priority, key, callback, due_at, expires_at, trace)


def _trace(given: Any) -> TraceParent:
    """The body's ``traceparent``, else the request's trace (``tracing.in_request``: all the
    tasks of one HTTP request share it), else a new trace."""
    if given is not None:
        return traceparent_field(given)
    return request_trace() or new_trace()


def iso(at: float) -> str:
    """A Unix time as the ISO-8601 text Celery's headers carry."""
    return datetime.fromtimestamp(at, UTC).isoformat()


def batch_body(item: Any) -> Any:
    """Batch items may say ``input_data`` (the older managers' name) for ``input``."""
    if isinstance(item, Mapping) and "input_data" in item and "input" not in item:
        item = {("input" if k == "input_data" else k): v for k, v in item.items()}
    return item


def valid_task_id(task_id: object) -> TypeGuard[str]:
    return isinstance(task_id, str) and _TASK_ID.match(task_id) is not None


def build_message(sub: Submission, task_id: str, **extra: Any) -> TaskMessage:
    """The Celery message of one submission, with the task type's own time limits and its
    trace (the task's publish span as the parent: ``tracing.span_id_of``)."""
    trace = sub.trace
    return build_task_message(
        task_id,
        sub.spec.name,
        sub.queue,
        kwargs=sub.input,
        priority=sub.priority,
        timelimit=sub.spec.timelimit,
        expires=iso(sub.expires_at) if sub.expires_at is not None else None,
        traceparent=trace.header(span_id_of(task_id)) if trace is not None else None,
        **extra,
    )


def shared_trace(subs: Sequence[Submission]) -> str | None:
    """The trace id all of ``subs`` belong to (a batch's, a request's), or ``None`` when they
    are of several traces (or of none): then each record names its own."""
    first = subs[0].trace if subs else None
    if first is None:
        return None
    for sub in subs:
        if sub.trace is not first and (sub.trace is None or sub.trace.trace_id != first.trace_id):
            return None
    return first.trace_id


def build_messages(subs: Sequence[Submission], ids: Sequence[str]) -> list[TaskMessage]:
    """The Celery message of each submission, with its task id."""
    return [build_message(sub, tid) for sub, tid in zip(subs, ids, strict=True)]


def new_records(
    subs: Sequence[Submission], ids: Sequence[str], traced: bool = False
) -> list[dict[str, Any]]:
    """What differs between new records: id, task, queue and webhook (and, when any of them
    is delayed, when each is due; with ``traced``, each one's trace id, when they are not all
    of one trace: every record of a run has the same fields)."""
    delayed = any(s.due_at is not None for s in subs)
    out = []
    for s, tid in zip(subs, ids, strict=True):
        record = {
            "task_id": tid,
            "task": s.spec.name,
            "queue": s.queue,
            "webhook": (webhook_fields(s.callback_url) or {"webhook": None})["webhook"],
        }
        if delayed:
            record["eta"] = s.due_at
        if traced:
            record["trace_id"] = s.trace.trace_id if s.trace is not None else None
        out.append(record)
    return out
