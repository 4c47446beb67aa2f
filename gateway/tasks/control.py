"""Celery's remote control (revoke, inspect), run in worker threads, never on the event loop.

Control messages are broadcasts on the broker with replies gathered for a timeout: blocking by
nature in kombu, so each call runs in ``asyncio.to_thread`` under a deadline, and inspect answers
are cached briefly so that a dashboard polling ``/api/workers`` does not flood the workers.

The app behind it has no tasks: it is built from ``shared.celery_config``, the configuration the
workers read, so its broadcasts travel on their broker under their ``global_keyprefix``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from celery import Celery

from shared.celery_config import celery_config
from shared.settings import Settings

log = logging.getLogger("taskgate.control")

INSPECT_TIMEOUT_S = 1.0
CACHE_S = 2.0


class CeleryControl:
    """Revoke and inspect the workers of ``settings``' broker, off the event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._app: Celery | None = None
        self._lock = asyncio.Lock()
        self._workers: tuple[float, list[dict[str, Any]]] | None = None

    async def app(self) -> Celery:
        """The control app, built in a worker thread on first use."""
        if self._app is None:
            self._app = await asyncio.to_thread(control_app, self.settings)
        return self._app

    async def revoke(self, task_id: str) -> None:
        app = await self.app()
        # ``app.control`` is created (and celery.app.control imported) on first access: that
        # must happen in the thread too, not on the loop.
        await asyncio.wait_for(asyncio.to_thread(lambda: app.control.revoke(task_id)), 10)

    async def workers(self) -> list[dict[str, Any]]:
        """Each worker with its queues, active task ids and counters (cached for 2 s)."""
        async with self._lock:
            if self._workers is not None and time.monotonic() - self._workers[0] < CACHE_S:
                return self._workers[1]
            app = await self.app()
            found = await asyncio.wait_for(asyncio.to_thread(_inspect, app), 10)
            self._workers = (time.monotonic(), found)
            return found


def control_app(settings: Settings) -> Celery:
    """A Celery app without tasks on the workers' broker: all that revoke and inspect need."""
    app = Celery("taskgate", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


def _inspect(app: Celery) -> list[dict[str, Any]]:
    # stats waits the whole timeout (any worker may answer); the two after it stop as soon as
    # every worker that answered it has (``limit``), so the call takes about one timeout, not 3.
    stats = app.control.inspect(timeout=INSPECT_TIMEOUT_S).stats() or {}
    inspect = app.control.inspect(timeout=INSPECT_TIMEOUT_S, limit=len(stats) or None)
    active = inspect.active() or {}
    queues = inspect.active_queues() or {}
    out = []
    for name in sorted(set(stats) | set(active)):
        st = stats.get(name, {})
        pool = st.get("pool", {}) if isinstance(st, dict) else {}
        total = st.get("total", {}) if isinstance(st, dict) else {}
        out.append(
            {
                "name": name,
                "queues": [q.get("name") for q in queues.get(name, []) if isinstance(q, dict)],
                "active": [t.get("id") for t in active.get(name, []) if isinstance(t, dict)],
                "processed": int(sum(v for v in total.values() if isinstance(v, int))),
                "concurrency": pool.get("max-concurrency"),
                "pid": st.get("pid"),
            }
        )
    return out
