"""A task submission checked against the contract, wherever it comes from: a ``Submission``.

The gateway parses submit bodies into one (``gateway.tasks.submission``: HTTP, Socket.IO,
batches, workflow steps, the in-process API), the producer builds one from Celery's
``apply_async`` options (``shared.send_options``). The rules both need are here once: the
``InvalidInput`` that names a field (``field_error``) or an option beyond the contract's
(``refuse_unknown``), the queue and priority (``queue_and_priority``), and when a task is due
and expires (``parse_timing``: ``countdown``, ``eta``, ``expires``, bounded by ``MAX_DELAY_S``
and the caller's ``max_delay_s``).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.errors import InvalidInput
from shared.priority import MAX_PRIORITY
from shared.taskspec import TaskSpec
from shared.tracing import TraceParent, parse_traceparent

# The longest delay or expiry a submit may ask for.
MAX_DELAY_S = 30 * 86400


@dataclass(frozen=True, slots=True)
class Submission:
    """One task to send: its type, checked input, queue and priority, and when it is due."""

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
    # The trace it belongs to (``shared.tracing``); ``None``: the sender says none (the
    # producer picks one when it sends).
    trace: TraceParent | None = None


def field_error(field: str, reason: str) -> InvalidInput:
    """A 422 naming the field: ``details`` carries ``field`` and ``reason``."""
    return InvalidInput(f"{field} {reason}", details={"field": field, "reason": reason})


def refuse_unknown(names: Iterable[Any], accepted: Collection[str]) -> None:
    """``InvalidInput`` naming the first of ``names`` (sorted) that is not ``accepted``: an
    option beyond the contract's is refused rather than ignored."""
    extra = sorted(str(k)[:64] for k in names if k not in accepted)
    if extra:
        raise InvalidInput(
            f"{extra[0]} is not an accepted option",
            details={
                "field": extra[0],
                "reason": "is not an accepted option",
                "accepted": sorted(accepted),
            },
        )


def traceparent_field(value: Any, field: str = "traceparent") -> TraceParent:
    """A W3C ``traceparent`` given by a caller, or a 422 naming ``field``."""
    try:
        return parse_traceparent(value)
    except ValueError as exc:
        raise field_error(field, str(exc)) from None


def queue_and_priority(
    spec: TaskSpec, routes: Sequence[tuple[str, str]], given: Mapping[str, Any]
) -> tuple[str, int]:
    """The ``queue`` and ``priority`` that ``given`` names for a task of ``spec`` (not named:
    the task's default queue, ``routes`` applied, and 0), or ``InvalidInput`` naming the field:
    the queue must be one the task allows, the priority an integer from 0 to ``MAX_PRIORITY``."""
    allowed = spec.allowed_queues(routes)
    queue = given.get("queue", allowed[0])
    if queue not in allowed:
        raise field_error("queue", f"must be one of {', '.join(allowed)} for {spec.name}")
    priority = given.get("priority", 0)
    if (
        isinstance(priority, bool)
        or not isinstance(priority, int)
        or not 0 <= priority <= MAX_PRIORITY
    ):
        raise field_error("priority", f"must be an integer from 0 to {MAX_PRIORITY}")
    return queue, priority


def parse_timing(
    body: dict[str, Any], max_delay_s: float = MAX_DELAY_S, now: float | None = None
) -> tuple[float | None, float | None]:
    """``countdown`` (seconds) or ``eta`` (ISO-8601, or a ``datetime``), and ``expires``
    (seconds, ISO-8601 or a ``datetime``): the due and expiry times (``None``: now, never), or
    ``InvalidInput`` naming the field."""
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
    """An ISO-8601 time or a ``datetime`` (a naive one is UTC) as a Unix time, at most
    ``most_s`` ahead."""
    wrong = field_error(field, "must be an ISO-8601 time, such as 2030-01-01T12:00:00Z")
    if isinstance(raw, datetime):
        moment = raw
    elif not isinstance(raw, str) or len(raw) > 64:
        raise wrong
    else:
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
