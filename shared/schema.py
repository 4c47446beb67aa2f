"""The snapshot of a task and the update message that carries it on pub/sub.

A snapshot is what clients see (``GET /api/tasks/{id}``, the ``task`` event). An update is what
workers and the gateway publish on the progress channel: ``{"v": SCHEMA_VERSION, "owner": user,
"snapshot": {...}}``. The update is built inside the same Lua script that writes the record, so
the bytes on the channel are exactly the record after the change.
"""

from __future__ import annotations

from typing import (
    Annotated,
    Any,
    NotRequired,  # pydantic reads these on Python < 3.12
)

import orjson
from pydantic import Field, WithJsonSchema
from typing_extensions import TypedDict

from shared.status import TaskStatus

SCHEMA_VERSION = 1


class Progress(TypedDict):
    percent: float
    message: str | None
    data: dict[str, Any]


class ErrorInfo(TypedDict):
    type: str
    message: str


class WebhookInfo(TypedDict):
    url: str
    state: str  # pending, delivered, failed
    attempts: int
    last_status: int | None
    last_error: str | None
    updated_at: float | None


class Snapshot(TypedDict):
    """The one definition of a snapshot: its fields (``SNAPSHOT_FIELDS``, the order the Lua
    scripts write them in) and the OpenAPI document's ``Snapshot`` (``snapshot_json_schema``)."""

    task_id: str
    task: str
    queue: str
    status: Annotated[str, WithJsonSchema({"type": "string", "enum": list(TaskStatus.__members__)})]
    seq: Annotated[int, Field(ge=1)]
    progress: Progress
    result: Any
    error: ErrorInfo | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    # True while a RUNNING task's worker has missed three heartbeats (see shared.records).
    stalled: bool
    # The workflow (chain, group, chord) this task belongs to, or null.
    workflow_id: str | None
    # Completion webhook delivery (shared.webhooks); null when the task has no callback_url.
    webhook: WebhookInfo | None
    # The attempt running or next (1-based; null before the first run), and when a RETRYING
    # task runs again (null otherwise).
    attempt: Annotated[int, Field(ge=1)] | None
    next_attempt_at: float | None
    # When a task submitted with ``countdown`` or ``eta`` is due (null for the others).
    eta: float | None
    # The task whose code started this one (``ctx.start``, a producer call inside a task), or
    # null.
    parent_id: str | None
    # The W3C trace the task belongs to (32 hex digits; shared.tracing): the caller's
    # traceparent, else one the gateway (or, for a Celery-native message, the worker) started.
    trace_id: str | None


class Update(TypedDict):
    v: int
    owner: str
    snapshot: Snapshot
    # When Redis published it (Unix seconds, ``publish.lua``: the script that changed the
    # record), for the delivery-lag metric; absent from messages of older writers.
    at: NotRequired[float | None]


# Fields of the record hash that make up the snapshot, in order. Each value is stored already
# JSON-encoded so the Lua script can assemble the snapshot by concatenation, with no re-encoding.
SNAPSHOT_FIELDS: tuple[str, ...] = tuple(Snapshot.__annotations__)


def snapshot_json_schema() -> dict[str, Any]:
    """The JSON Schema of a snapshot, from ``Snapshot`` (``$ref``-free, for the OpenAPI
    document): every field is always there, ``null`` where it has no value."""
    from pydantic import TypeAdapter

    from shared.task_input import inline_refs

    schema = inline_refs(TypeAdapter(Snapshot).json_schema())
    schema.pop("title", None)
    return schema


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


_HEAD = b'{"v":%d,"owner":"' % SCHEMA_VERSION
_OWNER_END = b',"snapshot'


def owner_of(data: bytes) -> str | None:
    """The owner of an update message as the scripts and ``records`` write it, read from its
    head without parsing the rest; ``None`` when the head is not that (then decode it all).

    The owner is the first value, a JSON string, and ``,"`` cannot occur inside a JSON string
    (its quotes are escaped), so the string ends where ``,"snapshot`` first appears."""
    if not data.startswith(_HEAD):
        return None
    end = data.find(_OWNER_END, len(_HEAD))
    if end < 0:
        return None
    try:
        owner = orjson.loads(data[len(_HEAD) - 1 : end])
    except orjson.JSONDecodeError:
        return None
    return owner if isinstance(owner, str) else None


def decode_updates(data: bytes | str) -> list[Update]:
    """Parse and check one pub/sub message; raise ``ValueError`` when it is not valid.

    A message holds one update (``"snapshot"``, as every script that changes a record
    publishes it) or several of one owner (``"snapshots"``, in order: the PENDING updates of
    one accept run, ``shared.records_batch``); either way the result is one update each.
    """
    msg = orjson.loads(data)
    if not isinstance(msg, dict) or msg.get("v") != SCHEMA_VERSION:
        raise ValueError("not a taskgate update of this schema version")
    owner = msg.get("owner")
    if not isinstance(owner, str):
        raise ValueError("update without owner")
    snaps = msg.get("snapshots")
    if snaps is None:
        snaps = [msg.get("snapshot")]
    elif not isinstance(snaps, list) or not snaps:
        raise ValueError("snapshots is not a non-empty list")
    for snap in snaps:
        if not isinstance(snap, dict):
            raise ValueError("update without snapshot")
        if not isinstance(snap.get("task_id"), str) or not isinstance(snap.get("seq"), int):
            raise ValueError("snapshot without task_id or seq")
    at = msg.get("at")
    return [{"v": SCHEMA_VERSION, "owner": owner, "snapshot": snap, "at": at} for snap in snaps]
