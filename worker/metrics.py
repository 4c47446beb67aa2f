"""The workers' task metrics, with prometheus-client in multiprocess mode.

A Celery worker is a main process and its pool's children, so every metric is kept in files
(``PROMETHEUS_MULTIPROC_DIR``) that the main process reads when scraped. With
``TASKGATE_WORKER_METRICS_PORT`` and ``PROMETHEUS_MULTIPROC_DIR`` (a directory of this worker's
own) in the worker's environment, ``serve`` (at ``worker_init``, in the main process, before the
pool forks) empties that directory and starts the HTTP server on that port
(``TASKGATE_WORKER_METRICS_HOST``, default 127.0.0.1); without them the counts are kept in each
process and never shown.

Where each is counted, and why once:

- ``taskgate_task_executions_total{task,status}``, ``taskgate_task_duration_seconds{task}``
  (started to finished, of the run that ended it), ``taskgate_task_queue_wait_seconds{task}``
  (submitted to the first start) and ``taskgate_task_retries_total{task}``: from the record's
  status changes this process applied (``SyncRecords.observer``). ``transition.lua`` compares
  and sets in one atomic step, so exactly one process applies each change: the worker that ran
  the task, or the gateway that cancelled it before it started (the gateways count theirs in the
  same families). Redelivered or duplicated messages do not add: their transitions do not apply.
- ``taskgate_active_tasks{queue}``: up while a pool process runs a task (a ``livesum`` gauge:
  a process that died is left out when scraped).
- ``taskgate_adopted_messages_total{task}``: messages sent with Celery's own API given a record
  here (the adoption is a create that only one delivery can win).
- ``taskgate_webhooks_total{outcome}``: completion webhook attempts, by outcome.

Task labels are registered names; any other (an unknown task's message) is ``unregistered``, so
a stream of bad names cannot create series.
"""

from __future__ import annotations

import glob
import logging
import os
from typing import Any

import orjson

from shared.errors import ConfigError
from shared.registry import task_label
from shared.settings import Settings
from shared.status import TERMINAL, TaskStatus

log = logging.getLogger("taskgate.worker.metrics")

ENV_PORT = "TASKGATE_WORKER_METRICS_PORT"
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class WorkerMetrics:
    def __init__(self) -> None:
        # Imported here: after ``serve`` set PROMETHEUS_MULTIPROC_DIR, which prometheus-client
        # reads when it is imported.
        from prometheus_client import Counter, Gauge, Histogram

        self.executions = Counter(
            "taskgate_task_executions",
            "Tasks ended, by task and terminal status, counted by the process whose transition "
            "ended them; sum over gateways and workers",
            ["task", "status"],
        )
        self.duration = Histogram(
            "taskgate_task_duration_seconds",
            "How long the run that ended a task took (started to finished)",
            ["task"],
            buckets=DURATION_BUCKETS,
        )
        self.queue_wait = Histogram(
            "taskgate_task_queue_wait_seconds",
            "From a task's submit (its record's creation) to its first start",
            ["task"],
            buckets=WAIT_BUCKETS,
        )
        self.retries = Counter("taskgate_task_retries", "Tasks set to retry, by task", ["task"])
        self.active = Gauge(
            "taskgate_active_tasks",
            "Tasks running in the worker pools, by queue",
            ["queue"],
            multiprocess_mode="livesum",
        )
        self.adopted = Counter(
            "taskgate_adopted_messages",
            "Messages sent with Celery's own API (send_task, .delay(), beat) given a record",
            ["task"],
        )
        self.webhooks = Counter(
            "taskgate_webhooks", "Completion webhook attempts, by outcome", ["outcome"]
        )

    def status_changed(self, status: TaskStatus, snapshot: bytes | None) -> None:
        """``SyncRecords.observer``: a status change this process applied."""
        if snapshot is None:
            return
        try:
            snap: dict[str, Any] = orjson.loads(snapshot)
        except orjson.JSONDecodeError:
            return
        task = task_label(snap.get("task"))
        if status in TERMINAL:
            self.executions.labels(task, status.value).inc()
            started, finished = snap.get("started_at"), snap.get("finished_at")
            if isinstance(started, (int, float)) and isinstance(finished, (int, float)):
                self.duration.labels(task).observe(max(0.0, finished - started))
        elif status is TaskStatus.RUNNING:
            created, started = snap.get("created_at"), snap.get("started_at")
            first = snap.get("attempt") in (None, 1)
            if first and isinstance(created, (int, float)) and isinstance(started, (int, float)):
                self.queue_wait.labels(task).observe(max(0.0, started - created))
        elif status is TaskStatus.RETRYING:
            self.retries.labels(task).inc()


_METRICS: WorkerMetrics | None = None


def metrics() -> WorkerMetrics:
    """This process's metrics (made on first use, in each process)."""
    global _METRICS
    if _METRICS is None:
        _METRICS = WorkerMetrics()
    return _METRICS


def serve(settings: Settings) -> int | None:
    """In the worker's main process, before the pool forks: the HTTP server, if
    ``TASKGATE_WORKER_METRICS_PORT`` asks for one. The port, or None.

    prometheus-client decides at import whether values live in files, from
    ``PROMETHEUS_MULTIPROC_DIR``; Celery's command line imports it (through Flower's command)
    before any task code, so the directory must be in the environment the worker starts with.
    Without it, or when the counts do not reach it, this is a ``ConfigError``: loudly, at
    start, rather than a scrape that shows nothing."""
    port = settings.worker_metrics_port
    if not port:
        return None
    path = settings.metrics_dir or ""
    if not path or not os.path.isdir(path):
        raise ConfigError(
            f"{ENV_PORT} needs PROMETHEUS_MULTIPROC_DIR: an existing directory of this worker's "
            "own, set in the environment the worker starts with (prometheus-client's "
            "multiprocess mode; `taskgate up` and docker-compose.yml set both)"
        )
    # Another run's files would be counted again: start from an empty directory.
    for stale in glob.glob(os.path.join(path, "*.db")):
        os.unlink(stale)
    from prometheus_client import (
        CollectorRegistry,
        Counter,
        PlatformCollector,
        ProcessCollector,
        start_http_server,
    )

    # The start-up check: a count of this start must land in the directory (its file then stays
    # open for this process's other counts: it is not removed).
    starts = Counter("taskgate_worker_starts", "Worker main processes started", registry=None)
    starts.inc()
    if not glob.glob(os.path.join(path, f"counter_{os.getpid()}.db")):
        raise ConfigError(
            "PROMETHEUS_MULTIPROC_DIR was set after prometheus-client was imported: set it in "
            "the environment the worker starts with"
        )
    registry = CollectorRegistry()
    registry.register(_LiveProcesses(path))
    # The main process's own (the pool's processes are summed in the families above).
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    host = settings.worker_metrics_host
    start_http_server(port, addr=host, registry=registry)
    log.info("worker metrics on http://%s:%d/metrics (files in %s)", host, port, path)
    return port


class _LiveProcesses:
    """prometheus-client's MultiProcessCollector, after leaving out the live gauges of pool
    processes that died (killed by the OOM killer or a hard time limit: nobody told it)."""

    def __init__(self, path: str) -> None:
        from prometheus_client import multiprocess

        self.path = path
        self.inner = multiprocess.MultiProcessCollector(None, path=path)  # type: ignore[no-untyped-call]
        self.mark_dead: Any = multiprocess.mark_process_dead

    def collect(self) -> Any:
        for name in glob.glob(os.path.join(self.path, "gauge_live*_*.db")):
            pid = os.path.basename(name).rsplit("_", 1)[-1].removesuffix(".db")
            if pid.isdigit() and not _alive(int(pid)):
                self.mark_dead(int(pid), self.path)
        return self.inner.collect()  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
