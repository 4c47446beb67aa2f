"""The worker's records: one Redis client per (forked) process, shared by every task module.

The runner, the webhook delivery and the maintenance tasks all read and write task records
through the one ``RecordsPerProcess`` that ``worker.celery_app`` builds and hands them.
"""

from __future__ import annotations

import os

from shared.records import SyncRecords
from shared.redis_client import sync_client
from shared.settings import Settings
from shared.status import TaskStatus
from worker.metrics import metrics


def _observe(status: TaskStatus, snapshot: bytes | None) -> None:
    metrics().status_changed(status, snapshot)


class RecordsPerProcess:
    """One Redis client per (forked) process: a client must not cross a fork."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pid = -1
        self._records: SyncRecords | None = None

    def get(self) -> SyncRecords:
        """This process's records, connecting (again) after a fork."""
        if self._records is None or self._pid != os.getpid():
            client = sync_client(
                self.settings.require_redis(),
                socket_timeout=10,
                socket_connect_timeout=5,
                health_check_interval=30,
            )
            self._records = SyncRecords(client, self.settings.keys, self.settings.retention_s)
            # Task metrics from the status changes this process applies (worker.metrics); made
            # at the first change, after worker_init set up the metrics' directory.
            self._records.observer = _observe
            self._pid = os.getpid()
        return self._records
