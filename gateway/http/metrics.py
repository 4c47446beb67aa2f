"""A gateway's Prometheus metrics (``GET /metrics``), with prometheus-client.

Each app has a registry of its own (tests run many apps in one process), with the process,
platform and garbage-collector collectors. What this gateway does is counted where it is done:

- HTTP requests: a latency histogram by route pattern, method and status (``count_requests``);
- Socket.IO: connections (gauge), connects by outcome and events by name (``sockets.handlers``);
- the relay: updates delivered, skipped, unheard, reconnects; the end-to-end **delivery lag**
  histogram, from the time Redis published an update (``"at"`` in the message, stamped by
  ``publish.lua`` in the script that changed the record) to the frame written to the sockets
  (``live.router``);
- tasks: submits accepted by task; tasks ended by a transition this gateway applied (a cancel of
  a task that had not started: ``taskgate_task_executions_total``, the same family the workers
  count their ends in, so the sum over every gateway and worker counts each task once);
- Redis: connections waited for from the pool and the wait (``shared.redis_client``), store
  errors answered 503 by operation;
- the outbox's size, queue depths, the event loop's lag, GC pauses, uptime.

Counts other parts keep (the relay's, the fanout's, the coalescer's) are read at scrape time by
``_AppCollector``. Labels are bounded: routes by their pattern (an unknown path is
``unmatched``), tasks by registered name, events by the known names (else ``unknown``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator

import orjson
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from gateway.appkeys import BROKER, FANOUT, RELAY, SERVICE, SETTINGS, SIO, TASK_EVENTS
from gateway.broker.outbox import OutboxBroker
from gateway.broker.sent_events import sent_events_of
from gateway.process import gctune
from gateway.tasks.coalesce import PIECES
from shared import pool_metrics
from shared.registry import task_label
from shared.status import TERMINAL, TaskStatus

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
LAG_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
LOOP_LAG_INTERVAL_S = 0.25
SOCKET_EVENTS = ("submit", "cancel", "watch", "unknown")


class Metrics:
    """The app's registry and the metrics it records as things happen."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        GCCollector(registry=r)
        # The process and platform collectors read /proc and the OS: scraped in a thread, off
        # the event loop (``process_text``), made there on first use.
        self._process: CollectorRegistry | None = None
        self.started = time.monotonic()
        self.http = Histogram(
            "taskgate_http_request_duration_seconds",
            "HTTP requests by route pattern, method and status, and how long each took",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.internal_errors = Counter(
            "taskgate_internal_errors",
            "Unhandled errors (bugs, each logged with its traceback): HTTP 500s and internal acks",
            ["where"],
            registry=r,
        )
        self.socket_events = Counter(
            "taskgate_socketio_events",
            "Socket.IO events received, by name (submit, cancel, watch; unknown for the rest)",
            ["event"],
            registry=r,
        )
        self.socket_connects = Counter(
            "taskgate_socketio_connects",
            "Socket.IO connects, by outcome: accepted, or refused (bad or expired token)",
            ["outcome"],
            registry=r,
        )
        self.delivery_lag = Histogram(
            "taskgate_delivery_lag_seconds",
            "From Redis publishing an update (in the script that changed the record) to its "
            "frame written to the owner's sockets on this gateway",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.loop_lag = Histogram(
            "taskgate_event_loop_lag_seconds",
            f"How late a {LOOP_LAG_INTERVAL_S:g} s sleep on the event loop wakes up",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.executions = Counter(
            "taskgate_task_executions",
            "Tasks ended, by task and terminal status, counted by the process whose transition "
            "ended them (here: cancelled before they started); sum over gateways and workers",
            ["task", "status"],
            registry=r,
        )
        self.store_errors = Counter(
            "taskgate_store_unavailable",
            "Answers 503 store_unavailable (Redis down, busy or its pool exhausted), by where",
            ["where"],
            registry=r,
        )
        self.collector = _AppCollector(self)
        r.register(self.collector)

    def process_text(self) -> bytes:
        """The process and platform metrics (CPU, memory, open fds, Python): in a thread."""
        if self._process is None:
            registry = CollectorRegistry()
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            self._process = registry
        return generate_latest(self._process)

    def status_changed(self, status: TaskStatus, snapshot: bytes | None) -> None:
        """``AsyncRecords.observer``: a status change this gateway applied; the ends count."""
        if status not in TERMINAL or snapshot is None:
            return
        with contextlib.suppress(orjson.JSONDecodeError):
            task = task_label(orjson.loads(snapshot).get("task"))
            self.executions.labels(task=task, status=status.value).inc()

    def socket_event(self, event: str) -> None:
        self.socket_events.labels(event=event if event in SOCKET_EVENTS else "unknown").inc()


class _AppCollector(Collector):
    """What other parts of the app count, read when scraped (``attach`` names the app)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.app: web.Application | None = None
        # Read from Redis by the handler just before the scrape (never on the collect path).
        self.queue_depths: dict[str, int] = {}
        self.outbox_size: int | None = None

    def collect(self) -> Iterator[Metric]:
        app = self.app
        yield _gauge("taskgate_uptime_seconds", "Seconds since this gateway started",
                     time.monotonic() - self.metrics.started)  # fmt: skip
        if app is None:
            return
        relay = app.get(RELAY)
        if relay is not None:
            for name, text, value in (
                ("taskgate_relay_updates", "Updates the relay delivered to rooms", relay.delivered),
                ("taskgate_relay_skipped", "Malformed pub/sub messages skipped", relay.skipped),
                ("taskgate_relay_unheard", "Pub/sub messages left unparsed: no socket of their "
                 "user here, no result waited for", relay.unheard),
                ("taskgate_relay_reconnects", "Times the relay reconnected to Redis",
                 relay.reconnects),
            ):  # fmt: skip
                yield _counter(name, text, value)
            yield _gauge("taskgate_relay_connected", "1 while the relay is subscribed",
                         1.0 if relay.connected.is_set() else 0.0)  # fmt: skip
        sio = app.get(SIO)
        if sio is not None:
            yield _gauge("taskgate_socketio_connections", "Connected Socket.IO clients",
                         len(sio.eio.sockets))  # fmt: skip
        fanout = app.get(FANOUT)
        if fanout is not None:
            frames = CounterMetricFamily(
                "taskgate_socketio_frames",
                "Relay and heartbeat packets, by path: written straight to the socket, or queued",
                labels=["path"],
            )
            frames.add_metric(["direct"], fanout.direct)
            frames.add_metric(["queued"], fanout.queued)
            yield frames
        events = app.get(TASK_EVENTS)
        if events is not None:
            yield _counter("taskgate_task_events_dropped", "Task updates not sent to a user's "
                           "room because it had been sent that seq or a newer one",
                           events.dropped)  # fmt: skip
        service = app.get(SERVICE)
        if service is not None:
            groups = service.submit_groups
            yield _counter("taskgate_submit_groups", "Script runs single submits were "
                           f"accepted in (a group goes in up to {PIECES} pieces)",
                           groups.groups)  # fmt: skip
            yield _counter("taskgate_submit_grouped", "Single submits accepted through groups",
                           groups.items)  # fmt: skip
            submitted = CounterMetricFamily(
                "taskgate_tasks_submitted", "Tasks accepted, by task name", labels=["task"]
            )
            for task, count in sorted(service.accepted.items()):
                submitted.add_metric([task], count)
            yield submitted
        pauses = CounterMetricFamily(
            "taskgate_gc_pause_seconds", "Time the garbage collector stopped the process, by "
            "generation", labels=["generation"],
        )  # fmt: skip
        collections = CounterMetricFamily(
            "taskgate_gc_collections", "Garbage collections, by generation", labels=["generation"]
        )
        for gen in range(3):
            pauses.add_metric([str(gen)], gctune.PAUSES.total_s[gen])
            collections.add_metric([str(gen)], gctune.PAUSES.count[gen])
        yield pauses
        yield collections
        pool = pool_metrics.POOL
        yield _counter("taskgate_redis_pool_waits", "Redis commands that had to wait for a "
                       "free pooled connection", pool.waits)  # fmt: skip
        yield _counter("taskgate_redis_pool_wait_seconds", "Time spent waiting for a free "
                       "pooled Redis connection", pool.wait_s)  # fmt: skip
        yield _counter("taskgate_redis_pool_timeouts", "Waits for a pooled Redis connection "
                       "that gave up (answered 503)", pool.timeouts)  # fmt: skip
        if self.queue_depths:
            depth = GaugeMetricFamily(
                "taskgate_queue_depth", "Messages waiting in each broker queue", labels=["queue"]
            )
            for queue, n in sorted(self.queue_depths.items()):
                depth.add_metric([queue], n)
            yield depth
        if self.outbox_size is not None:
            yield _gauge("taskgate_outbox_size", "Message copies in the outbox (about the tasks "
                         "not ended; Redis broker only)", self.outbox_size)  # fmt: skip
        broker = app.get(BROKER)
        sent = sent_events_of(broker) if broker is not None else None
        if sent is not None:
            family = CounterMetricFamily(
                "taskgate_sent_events", "Celery task-sent events (for Flower) of the tasks this "
                "gateway published, by outcome: sent, dropped_full (too many waiting), "
                "dropped_offline (the broker did not take them)", labels=["outcome"],
            )  # fmt: skip
            for outcome, count in sorted(sent.outcomes().items()):
                family.add_metric([outcome], count)
            yield family


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=value)


def _counter(name: str, text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, text, value=value)


METRICS = web.AppKey("metrics", Metrics)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def attach(app: web.Application) -> Metrics:
    """The app's ``Metrics``, its scrape-time collector pointed at ``app``."""
    metrics = app[METRICS] = Metrics()
    metrics.collector.app = app
    return metrics


@web.middleware
async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    status = 500
    started = time.perf_counter()
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        info = request.match_info.route.resource
        route = info.canonical if info is not None else "unmatched"
        request.app[METRICS].http.labels(request.method, route, str(status)).observe(
            time.perf_counter() - started
        )


async def watch_loop_lag(metrics: Metrics, interval: float = LOOP_LAG_INTERVAL_S) -> None:
    """Runs until cancelled: how late each ``interval`` sleep wakes, into ``loop_lag``."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval
        await asyncio.sleep(interval)
        metrics.loop_lag.observe(max(0.0, loop.time() - due))


async def metrics_handler(request: web.Request) -> web.Response:
    return await render_metrics(request.app)


async def render_metrics(app: web.Application) -> web.Response:
    """The scrape of ``app``: its Redis-read gauges first, then every family."""
    metrics = app[METRICS]
    collector = metrics.collector
    # Redis failing: a scrape without these, never a 500.
    try:
        collector.queue_depths = await app[BROKER].queue_depths(app[SETTINGS].queues)
    except Exception:
        collector.queue_depths = {}
    collector.outbox_size = None
    broker = app[BROKER]
    if isinstance(broker, OutboxBroker):
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            collector.outbox_size = await broker.size()
    process = await asyncio.to_thread(metrics.process_text)
    body = process + generate_latest(metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
