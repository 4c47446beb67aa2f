"""The snapshot of a task and the update message that carries it on pub/sub.

A snapshot is what clients see (``GET /api/tasks/{id}``, the ``task`` event). An update is what
workers and the gateway publish on the progress channel: ``{"v": SCHEMA_VERSION, "owner": user,
"snapshot": {...}}``. The update is built inside the same Lua script that writes the record, so
the bytes on the channel are exactly the record after the change.
"""

from __future__ import annotations

from typing import Any, TypedDict

import orjson

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
    task_id: str
    task: str
    queue: str
    status: str
    seq: int
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


class Update(TypedDict):
    v: int
    owner: str
    snapshot: Snapshot


# Fields of the record hash that make up the snapshot, in order. Each value is stored already
# JSON-encoded so the Lua script can assemble the snapshot by concatenation, with no re-encoding.
SNAPSHOT_FIELDS: tuple[str, ...] = (
    "task_id",
    "task",
    "queue",
    "status",
    "seq",
    "progress",
    "result",
    "error",
    "created_at",
    "started_at",
    "finished_at",
    "stalled",
    "workflow_id",
    "webhook",
)


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


def decode_update(data: bytes | str) -> Update:
    """Parse and check one pub/sub message; raise ``ValueError`` when it is not a valid update."""
    msg = orjson.loads(data)
    if not isinstance(msg, dict) or msg.get("v") != SCHEMA_VERSION:
        raise ValueError("not a taskgate update of this schema version")
    owner = msg.get("owner")
    snap = msg.get("snapshot")
    if not isinstance(owner, str) or not isinstance(snap, dict):
        raise ValueError("update without owner or snapshot")
    if not isinstance(snap.get("task_id"), str) or not isinstance(snap.get("seq"), int):
        raise ValueError("snapshot without task_id or seq")
    update: Update = msg  # type: ignore[assignment]
    return update
