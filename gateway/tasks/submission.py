"""A submit body checked against the contract and the task's schema: a ``Submission``.

Every way in (HTTP, Socket.IO, batches, workflow steps, the in-process API) parses its bodies
here, so one body is accepted or refused the same way everywhere.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeGuard

from gateway.broker.message import TaskMessage, build_task_message
from gateway.broker.redis_broker import MAX_PRIORITY
from shared.errors import InvalidInput
from shared.registry import TaskSpec, get_task
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
    }
)
# The longest delay or expiry a submit may ask for.
MAX_DELAY_S = 30 * 86400
IDEMPOTENCY_KEY_MAX = 200
_TASK_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass(frozen=True, slots=True)
class Submission:
    spec: TaskSpec
    input: dict[str, Any]
    queue: str
    priority: int
    idempotency_key: str | None
    callback_url: str | None = None
    # When a delayed task is due (``countdown``, ``eta``), and when it expires (``expires``),
    # as Unix times; ``None``: now, never.
    due_at: float | None = None
    expires_at: float | None = None


def field_error(field: str, reason: str) -> InvalidInput:
    """A 422 naming the field: ``details`` carries ``field`` and ``reason``."""
    return InvalidInput(f"{field} {reason}", details={"field": field, "reason": reason})


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
    extra = sorted(str(k)[:64] for k in body if k not in SUBMIT_FIELDS)
    if extra:
        raise InvalidInput(
            f"{extra[0]} is not an accepted option",
            details={
                "field": extra[0],
                "reason": "is not an accepted option",
                "accepted": sorted(SUBMIT_FIELDS),
            },
        )
    if "task" not in body:
        raise field_error("task", "is required")
    spec = get_task(body.get("task"))
    data = spec.schema.validate(body.get("input"))
    allowed = spec.allowed_queues(routes)
    queue = body.get("queue", allowed[0])
    if queue not in allowed:
        raise field_error("queue", f"must be one of {', '.join(allowed)} for {spec.name}")
    priority = body.get("priority", 0)
    if (
        isinstance(priority, bool)
        or not isinstance(priority, int)
        or not 0 <= priority <= MAX_PRIORITY
    ):
        raise field_error("priority", f"must be an integer from 0 to {MAX_PRIORITY}")
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
    return Submission(spec, data, queue, priority, key, callback, due_at, expires_at)


def parse_timing(
    body: dict[str, Any], max_delay_s: float = MAX_DELAY_S, now: float | None = None
) -> tuple[float | None, float | None]:
    """``countdown`` (seconds) or ``eta`` (ISO-8601), and ``expires`` (seconds or ISO-8601):
    the due and expiry times, or ``InvalidInput`` naming the field."""
    now = time.time() if now is None else now
    due_at: float | None = None
    if "countdown" in body and "eta" in body:
        raise field_error("eta", "cannot be given together with countdown")
    if "countdown" in body:
        countdown = body["countdown"]
        if (
            isinstance(countdown, bool)
            or not isinstance(countdown, int | float)
            or not 0 <= countdown <= max_delay_s
        ):
            raise field_error("countdown", f"must be a number of seconds from 0 to {max_delay_s:g}")
        due_at = now + float(countdown)
    elif "eta" in body:
        due_at = _instant(body["eta"], "eta", now, max_delay_s)
    expires_at: float | None = None
    if "expires" in body:
        raw = body["expires"]
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            if not 0 < raw <= MAX_DELAY_S:
                raise field_error(
                    "expires", f"must be seconds from 0 to {MAX_DELAY_S}, or an ISO-8601 time"
                )
            expires_at = now + float(raw)
        else:
            expires_at = _instant(raw, "expires", now, MAX_DELAY_S)
        if expires_at <= max(due_at or now, now):
            raise field_error("expires", "is not after the time the task is due")
    if due_at is not None and due_at <= now:
        due_at = None  # due already: sent at once
    return due_at, expires_at


def _instant(raw: Any, field: str, now: float, most_s: float) -> float:
    """An ISO-8601 time (a naive one is UTC) as a Unix time, at most ``most_s`` ahead."""
    wrong = field_error(field, "must be an ISO-8601 time, such as 2030-01-01T12:00:00Z")
    if not isinstance(raw, str) or len(raw) > 64:
        raise wrong
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise wrong from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    at = moment.timestamp()
    if at > now + most_s:
        raise field_error(field, f"must be at most {most_s:g} seconds ahead")
    return at


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
    """The Celery message of one submission, with the task type's own time limits."""
    return build_task_message(
        task_id,
        sub.spec.name,
        sub.queue,
        kwargs=sub.input,
        priority=sub.priority,
        timelimit=sub.spec.timelimit,
        expires=iso(sub.expires_at) if sub.expires_at is not None else None,
        **extra,
    )


def build_messages(subs: Sequence[Submission], ids: Sequence[str]) -> list[TaskMessage]:
    """The Celery message of each submission, with its task id."""
    return [build_message(sub, tid) for sub, tid in zip(subs, ids, strict=True)]


def new_records(subs: Sequence[Submission], ids: Sequence[str]) -> list[dict[str, Any]]:
    """What differs between new records: id, task, queue and webhook (and, when any of them
    is delayed, when each is due: every record of a run has the same fields)."""
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
        out.append(record)
    return out
