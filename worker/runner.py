"""Runs one registered task inside a Celery task, turning its life into record transitions."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded

from shared.errors import InvalidInput, TaskCancelled
from shared.records import SyncRecords
from shared.redis_client import sync_client
from shared.registry import TaskSpec
from shared.settings import Settings
from shared.status import TaskStatus
from worker.context import Context

log = logging.getLogger("taskgate.worker")

_NON_TERMINAL = (TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.RETRYING)


class RecordsPerProcess:
    """One Redis client per (forked) process: a client must not cross a fork."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pid = -1
        self._records: SyncRecords | None = None

    def get(self) -> SyncRecords:
        if self._records is None or self._pid != os.getpid():
            client = sync_client(
                self.settings.require_redis(), socket_timeout=10, health_check_interval=30
            )
            self._records = SyncRecords(client, self.settings.keys, self.settings.retention_s)
            self._pid = os.getpid()
        return self._records


def _error(exc: BaseException) -> dict[str, str]:
    return {"type": type(exc).__name__, "message": str(exc)[:2000]}


def finish(records: SyncRecords, task_id: str, status: TaskStatus, **fields: Any) -> None:
    if status is TaskStatus.COMPLETED:
        fields.setdefault("progress", {"percent": 100.0, "message": "completed", "data": {}})
    records.transition(
        task_id,
        "status",
        status=status,
        percent=100.0 if status is TaskStatus.COMPLETED else None,
        fields={"finished_at": time.time(), **fields},
    )


def register_celery_task(app: Celery, spec: TaskSpec, records: RecordsPerProcess) -> None:
    """Bind a registry entry to a Celery task of the same name."""

    @app.task(name=spec.name, bind=True, queue=spec.queue)  # type: ignore[untyped-decorator]
    def run(self: Task, *args: Any, **kwargs: Any) -> Any:
        task_id: str = self.request.id
        store = records.get()
        try:
            data = spec.schema.validate(kwargs)
        except InvalidInput as exc:
            finish(store, task_id, TaskStatus.FAILED, error=_error(exc))
            return None
        started = store.transition(
            task_id,
            "status",
            status=TaskStatus.RUNNING,
            only_if=_NON_TERMINAL,
            fields={"started_at": time.time()},
        )
        if started.missing:
            log.warning("task %s (%s) has no record; not running it", task_id, spec.name)
            return None
        if started.already_terminal:
            log.info("task %s already ended (cancelled?); not running it", task_id)
            return None
        ctx = Context(task_id, store)
        if started.cancel_requested:
            finish(store, task_id, TaskStatus.CANCELLED)
            return None
        try:
            result = spec.fn(ctx, *args, **data)
        except TaskCancelled:
            finish(store, task_id, TaskStatus.CANCELLED)
            return None
        except SoftTimeLimitExceeded:
            finish(
                store,
                task_id,
                TaskStatus.TIMED_OUT,
                error={"type": "TimeLimitExceeded", "message": "soft time limit exceeded"},
            )
            raise
        except Exception as exc:
            finish(store, task_id, TaskStatus.FAILED, error=_error(exc))
            raise
        if ctx.cancelled:
            finish(store, task_id, TaskStatus.CANCELLED)
            return None
        try:
            finish(store, task_id, TaskStatus.COMPLETED, result=result)
        except TypeError as exc:
            finish(
                store,
                task_id,
                TaskStatus.FAILED,
                error={
                    "type": "ResultNotJSON",
                    "message": f"result is not JSON-serializable: {exc}",
                },
            )
            raise
        return result
