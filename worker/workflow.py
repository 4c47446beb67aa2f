"""Keeping workflows honest when a step does not complete.

Celery continues a chain only after a step succeeds and calls a chord's body only when every
header step returned. A step that fails, times out or is cancelled would leave the steps after
it PENDING forever in taskgate's records. ``settle_workflow`` runs at the end of every task
run: if the task ended in anything but COMPLETED, its followers end too (CANCELLED after a
cancel, FAILED otherwise, with the reason), and the chain is cut so nothing runs after it.

A step's followers are every task in what its message carries: the rest of its chain, the body
of the chord it is a part of, and, nested in those signatures, what follows them (a frozen
signature's own chord body and chain). So a task inside a group inside a chain ends the steps
after the group, not its siblings, as in a flat chord.

A message Celery drops without running it (its ``expires`` passed, or it was revoked) never
reaches ``settle_workflow``; ``settle_revoked``, called by the worker app's ``task_revoked``
handler (``worker.celery_app``) with the worker's own records, ends its followers CANCELLED
unless the task is running elsewhere or completed.
"""

from __future__ import annotations

import logging
from typing import Any

from shared.records import SyncRecords
from shared.status import TERMINAL_NAMES, TaskStatus

log = logging.getLogger("taskgate.workflow")


def followers(request: Any) -> list[str]:
    """Task ids of every step that would run after this one (its chain's rest, a chord's body,
    and what those carry), in order, once each."""
    ids: list[str] = []
    for sig in getattr(request, "chain", None) or []:
        _collect(sig, ids)
    _collect(getattr(request, "chord", None), ids)
    return list(dict.fromkeys(ids))


def _collect(sig: Any, out: list[str]) -> None:
    if not isinstance(sig, dict):
        return
    kind = sig.get("subtask_type")
    kwargs = sig.get("kwargs") or {}
    options = sig.get("options") or {}
    if kind in ("chain", "group"):
        for task in kwargs.get("tasks") or []:
            _collect(task, out)
    elif kind == "chord":
        header = kwargs.get("header")
        for task in header if isinstance(header, list) else [header]:
            _collect(task, out)
        _collect(kwargs.get("body"), out)
    elif kind is None and isinstance(options.get("task_id"), str):
        out.append(options["task_id"])
    # A frozen signature carries what follows it too: the chord it ends, a chord body's chain.
    _collect(options.get("chord"), out)
    for task in options.get("chain") or []:
        _collect(task, out)


def _end(store: SyncRecords, task_id: str, ids: list[str], status: str) -> None:
    then = TaskStatus.CANCELLED if status == TaskStatus.CANCELLED else TaskStatus.FAILED
    error = {"type": "WorkflowStepEnded", "message": f"step {task_id} ended {status}"}
    for tid in ids:
        try:
            store.transition(
                tid,
                "status",
                status=then,
                fields={"error": error if then is TaskStatus.FAILED else None},
            )
        except Exception:
            log.exception("could not end workflow step %s after %s", tid, task_id)


def _ended(request: Any, store: SyncRecords) -> tuple[str, list[str], str | None] | None:
    """The task's id, its followers and its status; ``None`` when nothing follows it."""
    task_id = getattr(request, "id", None)
    ids = followers(request)
    if not task_id or not ids:
        return None
    snap = store.snapshot(task_id)
    return task_id, ids, snap["status"] if snap else None


def settle_workflow(request: Any, store: SyncRecords) -> None:
    """After a run: if the task did not complete, end its followers and cut the chain."""
    found = _ended(request, store)
    if found is None:
        return
    task_id, ids, status = found
    if status is None or status not in TERMINAL_NAMES or status == TaskStatus.COMPLETED:
        return
    request.chain = None  # Celery reads this after the run: nothing more is published
    _end(store, task_id, ids, status)


def settle_revoked(
    request: Any, store: SyncRecords, terminated: bool = False, expired: bool = False
) -> None:
    """A message Celery dropped unrun (expired, revoked): its followers end CANCELLED, unless
    its task completed or is running elsewhere (a redelivered copy; that run settles)."""
    found = _ended(request, store)
    if found is None:
        return
    task_id, ids, status = found
    if status == TaskStatus.COMPLETED or (status == TaskStatus.RUNNING and not terminated):
        return
    reason = "expired" if expired else "revoked"
    log.info("workflow step %s %s unrun; ending the %d steps after it", task_id, reason, len(ids))
    _end(store, task_id, ids, TaskStatus.CANCELLED)
