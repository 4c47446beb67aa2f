"""The context a running task receives: ``ctx.progress()`` and ``ctx.cancelled``."""

from __future__ import annotations

import math
import time
from typing import Any

from shared.errors import TaskCancelled
from shared.records import SyncRecords

# How stale the cached cancel flag may be when a task polls ``ctx.cancelled`` in a tight loop.
_CANCEL_POLL_S = 0.25


class Context:
    """Bound to one run of one task; reports through atomic record transitions."""

    def __init__(self, task_id: str, records: SyncRecords) -> None:
        self.task_id = task_id
        self._records = records
        self._cancel = False
        self._cancel_checked = 0.0

    def progress(self, percent: float, message: str | None = None, **data: Any) -> None:
        """Report progress; raise ``TaskCancelled`` if a cancel was asked meanwhile.

        ``percent`` is clamped to 0-100; a value below the last one is not published (the bar
        never goes back). ``data`` must be JSON-serializable.
        """
        pct = float(percent)
        if not math.isfinite(pct):
            raise ValueError("percent must be a finite number")
        pct = min(100.0, max(0.0, pct))
        result = self._records.transition(
            self.task_id,
            "progress",
            percent=pct,
            fields={"progress": {"percent": pct, "message": message, "data": data}},
        )
        self._cancel_checked = time.monotonic()
        if result.cancel_requested:
            self._cancel = True
            raise TaskCancelled("cancelled by request")

    @property
    def cancelled(self) -> bool:
        """True once a cancel was asked (read from the record at most every 250 ms)."""
        if not self._cancel and time.monotonic() - self._cancel_checked > _CANCEL_POLL_S:
            self._cancel = self._records.cancel_requested(self.task_id)
            self._cancel_checked = time.monotonic()
        return self._cancel

    def raise_if_cancelled(self) -> None:
        if self.cancelled:
            raise TaskCancelled("cancelled by request")
