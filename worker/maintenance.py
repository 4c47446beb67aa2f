"""Built-in maintenance tasks, run by ``celery -A worker beat`` (``TASKGATE_BEAT_SCHEDULE``).

They are Celery tasks of the worker only: not in the task registry, so no client can submit them.

``taskgate.sweep`` removes what expired records leave behind: a record expires on its own
``TASKGATE_RETENTION_S`` after it ends, but the user's index sets (all tasks, active, ended) keep
its id until something removes it. The sweep walks those sets with SCAN, in bounded pages, and
drops ids whose record is gone.
"""

from __future__ import annotations

import logging

from celery import Celery

from shared.records import SyncRecords
from worker.store import RecordsPerProcess

log = logging.getLogger("taskgate.maintenance")

SWEEP_TASK = "taskgate.sweep"
PAGE = 500


def sweep(records: SyncRecords, max_keys: int = 100_000) -> dict[str, int]:
    """Drop index entries of records that no longer exist. Returns what it looked at."""
    client, keys = records.client, records.keys
    seen_sets = removed = 0
    pattern = f"{keys.user_prefix}*"
    for raw_key in client.scan_iter(match=pattern, count=PAGE):
        key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
        if not key.endswith((":tasks", ":active", ":ended")):
            continue
        seen_sets += 1
        cursor = 0
        while True:
            cursor, members = client.zscan(key, cursor, count=PAGE)
            ids = [m.decode() if isinstance(m, bytes) else str(m) for m, _ in members]
            if ids:
                with client.pipeline(transaction=False) as pipe:
                    for tid in ids:
                        pipe.exists(keys.task(tid))
                    alive = pipe.execute()
                gone = [tid for tid, ok in zip(ids, alive, strict=True) if not ok]
                if gone:
                    client.zrem(key, *gone)
                    removed += len(gone)
            if cursor == 0:
                break
        if seen_sets >= max_keys:
            break
    if removed:
        log.info("sweep removed %d index entries of expired tasks", removed)
    return {"index_sets": seen_sets, "removed": removed}


def register_maintenance(app: Celery, records: RecordsPerProcess) -> None:
    """Bind the maintenance tasks; ``records`` is the worker's per-process records holder."""

    @app.task(name=SWEEP_TASK, shared=False, ignore_result=True)  # type: ignore[untyped-decorator]
    def sweep_task() -> dict[str, int]:
        return sweep(records.get())
