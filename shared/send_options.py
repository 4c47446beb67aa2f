"""One producer call checked against the contract before anything is written: a ``Send``.

``check_send`` is the producer's (``shared.producer``) counterpart of the gateway's submit
parser (``gateway.tasks.submission``), with the gateway's own rules for the values Celery's
``apply_async`` takes: the input against the task's input model (``shared.task_input``), the
queue among the task's (routes applied) and priority 0-9
(``shared.submission.queue_and_priority``), ``countdown`` /
``eta`` / ``expires`` (``shared.submission.parse_timing``; ``eta`` and ``expires`` may be
datetimes); besides, a caller's headers (JSON, none of Celery's own or taskgate's), a task id
(a UUID), and the owner: ``user=``, else the ``taskgate_user`` header, else the running task's
owner (``shared.current_task``). Anything wrong is ``InvalidInput`` naming it."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from shared.current_task import RunningTask
from shared.headers import HEADER_USER, MAX_OWNER_LEN
from shared.headers import PARENT_HEADER as PARENT_HEADER
from shared.settings import Settings
from shared.submission import (
    MAX_DELAY_S,
    Submission,
    field_error,
    parse_timing,
    queue_and_priority,
    refuse_unknown,
)
from shared.taskspec import TaskSpec

# Celery protocol 2's own headers: a caller's ``headers`` must not replace them.
CELERY_HEADERS = frozenset(
    {
        "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries",
        "timelimit", "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin",
        "ignore_result", "replaced_task_nesting", "stamped_headers", "stamps",
    }
)  # fmt: skip
# What ``apply_async`` takes (besides ``args`` and ``kwargs``); anything else is refused.
SEND_OPTIONS = (
    "countdown", "eta", "expires", "priority", "queue", "headers", "user", "task_id",
)  # fmt: skip
# The options checked as the gateway checks a submit body's fields of the same names.
BODY_OPTIONS = ("queue", "priority", "countdown", "eta", "expires")


@dataclass(frozen=True, slots=True)
class Send:
    """One checked call: the submission, as the gateway would have it, and who sends it."""

    sub: Submission
    # ``None``: not said (a send falls back to the service user, a signature to adoption's).
    owner: str | None
    parent_id: str | None
    headers: dict[str, Any]
    task_id: str | None = None


def check_send(
    settings: Settings,
    spec: TaskSpec,
    args: Any = None,
    kwargs: Any = None,
    *,
    parent: RunningTask | None = None,
    **options: Any,
) -> Send:
    """The call checked: input, options and owner; ``InvalidInput`` naming what is wrong.

    ``options`` are ``SEND_OPTIONS``; ``parent`` is the task that starts this one."""
    refuse_unknown(options, SEND_OPTIONS)
    if args:
        raise field_error("args", "must be empty: a taskgate task takes its input by name (kwargs)")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise field_error("kwargs", "must be a mapping of input fields")
    data = spec.schema.validate(dict(kwargs or {}))
    # An option given as None is not given (as Celery's apply_async takes it).
    given = {name: options[name] for name in BODY_OPTIONS if options.get(name) is not None}
    queue, priority = queue_and_priority(spec, settings.routes, given)
    headers = _headers(options.get("headers"))
    owner = _owner(options.get("user"), headers.pop(HEADER_USER, None), parent)
    # As the gateway bounds delays: a record outlives its task's wait.
    most = min(MAX_DELAY_S, settings.retention_s / 2)
    due_at, expires_at = parse_timing(given, max_delay_s=most)
    sub = Submission(spec, data, queue, priority, None, None, due_at, expires_at)
    parent_id = parent.task_id if parent is not None else None
    return Send(sub, owner, parent_id, headers, _task_id(options.get("task_id")))


def _headers(raw: Any) -> dict[str, Any]:
    """A caller's message headers: JSON values under names that are not Celery's own."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping) or not all(isinstance(k, str) for k in raw):
        raise field_error("headers", "must be a mapping of header names to values")
    for name in raw:
        if name in CELERY_HEADERS or (name.startswith("taskgate_") and name != HEADER_USER):
            raise field_error(f"headers.{name[:64]}", "is set by taskgate, not by the caller")
    try:
        orjson.dumps(dict(raw))
    except TypeError:
        raise field_error("headers", "must hold JSON values only") from None
    return dict(raw)


def _owner(user: Any, header: Any, parent: RunningTask | None) -> str | None:
    """The owner a call names (``user=``, else the ``taskgate_user`` header), else the running
    task's owner; ``None`` when none of them says."""
    if user is not None and header is not None and user != header:
        raise field_error("user", f"differs from the {HEADER_USER} header")
    named = user if user is not None else header
    if named is None:
        return parent.owner if parent is not None else None
    field = "user" if user is not None else f"headers.{HEADER_USER}"
    if not isinstance(named, str) or not 0 < len(named) <= MAX_OWNER_LEN:
        raise field_error(field, f"must be a user id of 1 to {MAX_OWNER_LEN} characters")
    try:
        named.encode("utf-8")
    except UnicodeEncodeError:
        raise field_error(field, "must be UTF-8 text") from None
    return named


def _task_id(raw: Any) -> str | None:
    """A caller's task id: a UUID in its canonical text (as the API's paths take them)."""
    if raw is None:
        return None
    try:
        canonical = str(uuid.UUID(raw)) if isinstance(raw, str) else None
    except ValueError:
        canonical = None
    if canonical is None or canonical != raw:
        raise field_error("task_id", "must be a UUID in lower-case hex with hyphens")
    return canonical
