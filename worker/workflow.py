"""Keeping workflows honest when a step does not complete.

Celery continues a chain only after a step succeeds and calls a chord's body only when every
header step returned. A step that fails, times out or is cancelled would leave the steps after it
(and a chord's body) PENDING forever in taskgate's records. ``settle_workflow`` runs at the end of
every task run: if the task ended in anything but COMPLETED, its followers end too (CANCELLED after
a cancel, FAILED otherwise, with the reason), and the chain is cut so nothing runs after it.
"""

from __future__ import annotations

import logging
from typing import Any

from shared.records import SyncRecords
from shared.status import TERMINAL_NAMES, TaskStatus

log = logging.getLogger("taskgate.workflow")


def followers(request: Any) -> list[str]:
    """Task ids of the steps that would run after this one: the chain's rest, a chord's body."""
    ids: list[str] = []
    for sig in getattr(request, "chain", None) or []:
        tid = _sig_id(sig)
        if tid:
            ids.append(tid)
    body = getattr(request, "chord", None)
    if body:
        tid = _sig_id(body)
        if tid:
            ids.append(tid)
    return ids


def _sig_id(sig: Any) -> str | None:
    if isinstance(sig, dict):
        options = sig.get("options") or {}
        tid = options.get("task_id")
        return tid if isinstance(tid, str) else None
    return None


def settle_workflow(request: Any, store: SyncRecords) -> None:
    """After a run: if the task did not complete, end its followers and cut the chain."""
    task_id = getattr(request, "id", None)
    ids = followers(request)
    if not task_id or not ids:
        return
    snap = store.snapshot(task_id)
    status = snap["status"] if snap else None
    if status is None or status not in TERMINAL_NAMES or status == TaskStatus.COMPLETED:
        return
    request.chain = None  # Celery reads this after the run: nothing more is published
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
