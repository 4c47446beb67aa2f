"""Prometheus metrics in the text exposition format (``GET /metrics``), with no extra library.

Counters live in this process; gauges (queue depths, the outbox's size, connected sockets, relay
state) and the counts other parts keep (the relay's, the fanout's, the sent events') are read
at scrape time. Labels are bounded: routes by their pattern, tasks by registered name.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable

from aiohttp import web
from redis.exceptions import RedisError

from gateway.appkeys import BROKER, FANOUT, RELAY, SERVICE, SETTINGS, SIO, TASK_EVENTS
from gateway.broker.outbox import OutboxBroker
from gateway.broker.sent_events import sent_events_of
from gateway.process import gctune
from gateway.tasks.coalesce import PIECES

Labels = tuple[tuple[str, str], ...]
_HELP = {
    "taskgate_http_requests_total": ("counter", "HTTP requests by route pattern and status"),
    "taskgate_tasks_submitted_total": ("counter", "Tasks accepted, by task name"),
    "taskgate_relay_updates_total": ("counter", "Updates the relay delivered to rooms"),
    "taskgate_relay_skipped_total": ("counter", "Malformed pub/sub messages skipped"),
    "taskgate_relay_unheard_total": (
        "counter",
        "Pub/sub messages left unparsed: no socket of their user here, no result waited for",
    ),
    "taskgate_relay_reconnects_total": ("counter", "Times the relay reconnected to Redis"),
    "taskgate_relay_connected": ("gauge", "1 while the relay is subscribed"),
    "taskgate_socketio_connections": ("gauge", "Connected Socket.IO clients"),
    "taskgate_socketio_frames_total": (
        "counter",
        "Relay and heartbeat packets, by path: written straight to the socket, or queued",
    ),
    "taskgate_task_events_dropped_total": (
        "counter",
        "Task updates not sent to a user's room because it had been sent that seq or a newer one",
    ),
    "taskgate_submit_groups_total": (
        "counter",
        f"Script runs single submits were accepted in (a group goes in up to {PIECES} pieces)",
    ),
    "taskgate_submit_grouped_total": ("counter", "Single submits accepted through groups"),
    "taskgate_gc_pause_seconds_total": (
        "counter",
        "Time the garbage collector stopped the process, by generation",
    ),
    "taskgate_gc_collections_total": ("counter", "Garbage collections, by generation"),
    "taskgate_queue_depth": ("gauge", "Messages waiting in each broker queue"),
    "taskgate_outbox_size": (
        "gauge",
        "Message copies in the outbox (about the tasks not ended; Redis broker only)",
    ),
    "taskgate_sent_events_total": (
        "counter",
        "Celery task-sent events (for Flower) of the tasks this gateway published, by outcome: "
        "sent, dropped_full (too many waiting), dropped_offline (the broker did not take them)",
    ),
    "taskgate_uptime_seconds": ("gauge", "Seconds since this gateway started"),
    "taskgate_internal_errors_total": (
        "counter",
        "Unhandled errors (bugs, each logged with its traceback): HTTP 500s and internal acks",
    ),
}


class Metrics:
    def __init__(self) -> None:
        self.counters: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
        self.started = time.monotonic()

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        self.counters[name][tuple(sorted(labels.items()))] += value


def _line(name: str, labels: Labels, value: float) -> str:
    if labels:
        inner = ",".join(
            f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
            for k, v in labels
        )
        return f"{name}{{{inner}}} {value:g}"
    return f"{name} {value:g}"


def render(metrics: Metrics, gauges: dict[str, dict[Labels, float]]) -> str:
    out: list[str] = []
    for name, (kind, text) in _HELP.items():
        series = {**metrics.counters.get(name, {}), **gauges.get(name, {})}
        if not series and kind == "counter":
            series = {(): 0.0}
        if not series:
            continue
        out.append(f"# HELP {name} {text}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(_line(name, labels, value) for labels, value in sorted(series.items()))
    return "\n".join(out) + "\n"


METRICS = web.AppKey("metrics", Metrics)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    status = 500
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
        request.app[METRICS].inc(
            "taskgate_http_requests_total", method=request.method, route=route, status=str(status)
        )


async def metrics_handler(request: web.Request) -> web.Response:
    app = request.app
    gauges: dict[str, dict[Labels, float]] = defaultdict(dict)
    relay = app[RELAY]
    gauges["taskgate_relay_updates_total"][()] = relay.delivered
    gauges["taskgate_relay_skipped_total"][()] = relay.skipped
    gauges["taskgate_relay_unheard_total"][()] = relay.unheard
    gauges["taskgate_relay_reconnects_total"][()] = relay.reconnects
    gauges["taskgate_relay_connected"][()] = 1.0 if relay.connected.is_set() else 0.0
    gauges["taskgate_socketio_connections"][()] = len(app[SIO].eio.sockets)
    fanout = app[FANOUT]
    gauges["taskgate_socketio_frames_total"][(("path", "direct"),)] = fanout.direct
    gauges["taskgate_socketio_frames_total"][(("path", "queued"),)] = fanout.queued
    gauges["taskgate_task_events_dropped_total"][()] = app[TASK_EVENTS].dropped
    groups = app[SERVICE].submit_groups
    gauges["taskgate_submit_groups_total"][()] = groups.groups
    gauges["taskgate_submit_grouped_total"][()] = groups.items
    for task, count in app[SERVICE].accepted.items():
        gauges["taskgate_tasks_submitted_total"][(("task", task),)] = count
    for gen in range(3):
        label = (("generation", str(gen)),)
        gauges["taskgate_gc_pause_seconds_total"][label] = round(gctune.PAUSES.total_s[gen], 6)
        gauges["taskgate_gc_collections_total"][label] = gctune.PAUSES.count[gen]
    gauges["taskgate_uptime_seconds"][()] = round(time.monotonic() - app[METRICS].started, 3)
    try:
        depths = await app[BROKER].queue_depths(app[SETTINGS].queues)
        for queue, depth in depths.items():
            gauges["taskgate_queue_depth"][(("queue", queue),)] = depth
    except Exception:
        pass
    broker = app[BROKER]
    events = sent_events_of(broker)
    if events is not None:
        for outcome, count in events.outcomes().items():
            gauges["taskgate_sent_events_total"][(("outcome", outcome),)] = count
    if isinstance(broker, OutboxBroker):
        # Redis failing: a scrape without the gauge, never a 500.
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            gauges["taskgate_outbox_size"][()] = await broker.size()
    return web.Response(text=render(app[METRICS], gauges), content_type="text/plain")
