"""Trace ids end to end (W3C Trace Context), and OpenTelemetry spans when it is installed.

A submit belongs to a trace: the caller's (HTTP ``traceparent`` header, ``"traceparent"`` in a
submit body), else one the gateway starts (``new_trace``: 16 random bytes). The trace id is the
snapshot's ``trace_id``, travels in the Celery message's ``traceparent`` header (where
OpenTelemetry's Celery instrumentation carries it too), is ``ctx.trace_id`` in the task, and a
task started from inside a task shares it (``shared.producer``). All the tasks of one batch or
workflow request share the request's trace; each gets its own span id, derived from its task id
(``span_id_of``: the id's first 16 hex digits, random in a UUID4), so a batch costs no random
bytes per task and a task's span can be named from its id alone (the worker's run span and the
gateway's delivery span hang under it without any lookup).

Spans (``span``, ``finished``) are OpenTelemetry's, exported over OTLP/HTTP, only when the
``otel`` extra is installed and ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set: ``configure`` decides once per process, and
without both nothing of OpenTelemetry is imported and every call here returns at once
(``enabled()`` is a plain flag). This is the one module that touches OpenTelemetry. Its spans
carry taskgate's own ids (``_ChosenIds``): a span's trace id is the task's, and the publish
span's id is the one the message names as parent.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("taskgate.tracing")

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
Attributes = Mapping[str, str | int | float | bool]


@dataclass(frozen=True, slots=True)
class TraceParent:
    """A trace and the span new work hangs under: ``parent_id`` is ``None`` when the trace
    starts here. ``flags`` are W3C's trace flags (``01``: sampled)."""

    trace_id: str
    parent_id: str | None = None
    flags: str = "01"

    def header(self, span_id: str) -> str:
        """The ``traceparent`` of work whose parent span is ``span_id``, in this trace."""
        return f"00-{self.trace_id}-{span_id}-{self.flags}"


def parse_traceparent(value: object) -> TraceParent:
    """A W3C ``traceparent`` (version 00: 32 hex trace id, not all zero; 16 hex parent id, not
    all zero; 2 hex flags; lower case); ``ValueError`` saying what is wrong."""
    if not isinstance(value, str):
        raise ValueError("must be a W3C traceparent string")
    match = _TRACEPARENT.match(value.strip())
    if match is None:
        raise ValueError(
            "must be a W3C traceparent: 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>"
        )
    trace_id, parent_id, flags = match.groups()
    if trace_id == _ZERO_TRACE:
        raise ValueError("has an all-zero trace id")
    if parent_id == _ZERO_SPAN:
        raise ValueError("has an all-zero parent id")
    return TraceParent(trace_id, parent_id, flags)


def new_trace() -> TraceParent:
    """A trace that starts here (one read of the OS's random source)."""
    return TraceParent(os.urandom(16).hex())


def span_id_of(task_id: str) -> str:
    """The span id of a task's publish (the parent its run names): the first 16 hex digits of
    a UUID task id (60 random bits; the version digit keeps it non-zero), else a hash."""
    if len(task_id) == 36 and _UUID.match(task_id):
        return task_id[:8] + task_id[9:13] + task_id[14:18]
    return hashlib.blake2b(task_id.encode(), digest_size=8).hexdigest()


def trace_id_of(header: object) -> str | None:
    """The trace id of a message's ``traceparent`` header, or ``None`` when it has none (or
    one that is not valid)."""
    try:
        return parse_traceparent(header).trace_id
    except ValueError:
        return None


# -- The trace of the request being handled ---------------------------------------------------

_REQUEST: ContextVar[TraceParent | None] = ContextVar("taskgate_request_trace", default=None)


def request_trace() -> TraceParent | None:
    """The trace of the request this code handles (``in_request``), if any."""
    return _REQUEST.get()


@contextmanager
def in_request(trace: TraceParent) -> Iterator[None]:
    """Submits parsed inside the block belong to ``trace`` unless their body names another."""
    token = _REQUEST.set(trace)
    try:
        yield
    finally:
        _REQUEST.reset(token)


# -- OpenTelemetry spans -------------------------------------------------------------------------

_enabled = False
_service = "taskgate"
_lock = threading.Lock()
_pid = 0
_tracer: Any = None
_provider: Any = None
# The ids the next span is made with (``_ChosenIds``), set just around ``start_span``.
_NEXT: ContextVar[tuple[int | None, int | None]] = ContextVar(
    "taskgate_next_span_ids", default=(None, None)
)


def configure(service: str, environ: Mapping[str, str] | None = None) -> bool:
    """Export spans as ``service`` if an OTLP endpoint is configured and the ``otel`` extra is
    installed; whether spans are exported. Without an endpoint nothing is imported."""
    global _enabled, _service
    env = os.environ if environ is None else environ
    _service = service
    if not any(env.get(name) for name in ENDPOINT_VARS):
        _enabled = False
        return False
    try:
        found = all(
            importlib.util.find_spec(name) is not None
            for name in ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http")
        )
    except ImportError:  # a parent package missing
        found = False
    if not found:
        log.warning(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but the otel extra is not installed "
            "(pip install 'taskgate[otel]'): no spans are exported"
        )
        _enabled = False
        return False
    _enabled = True
    return True


def enabled() -> bool:
    """Whether spans are exported (``configure``)."""
    return _enabled


def _get_tracer() -> Any:
    """This process's tracer, made on first use and again after a fork (an exporter's thread
    does not survive one: Celery's pool processes get their own)."""
    global _tracer, _provider, _pid
    if _pid == os.getpid() and _tracer is not None:
        return _tracer
    with _lock:
        if _pid != os.getpid() or _tracer is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

            class _ChosenIds(RandomIdGenerator):
                """taskgate's ids where it chose them (``_NEXT``), random ones elsewhere."""

                def generate_trace_id(self) -> int:
                    chosen = _NEXT.get()[0]
                    return chosen if chosen else super().generate_trace_id()

                def generate_span_id(self) -> int:
                    chosen = _NEXT.get()[1]
                    return chosen if chosen else super().generate_span_id()

            provider = TracerProvider(
                resource=Resource.create({"service.name": _service}), id_generator=_ChosenIds()
            )
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            _provider, _pid = provider, os.getpid()
            _tracer = provider.get_tracer("taskgate")
    return _tracer


def _parent(trace: TraceParent) -> Any:
    """The OpenTelemetry context a span of ``trace`` starts in: under its parent span (a remote
    one), or none (a root span; ``_ChosenIds`` gives it the trace id)."""
    from opentelemetry import trace as otel
    from opentelemetry.context import Context

    if trace.parent_id is None:
        return Context()
    parent = otel.SpanContext(
        int(trace.trace_id, 16),
        int(trace.parent_id, 16),
        is_remote=True,
        trace_flags=otel.TraceFlags(int(trace.flags, 16)),
    )
    return otel.set_span_in_context(otel.NonRecordingSpan(parent), Context())


def _start(
    name: str,
    trace: TraceParent,
    span_id: str | None,
    attributes: Attributes | None,
    start_ns: int | None = None,
) -> Any:
    token = _NEXT.set((int(trace.trace_id, 16), int(span_id, 16) if span_id else None))
    try:
        return _get_tracer().start_span(
            name, context=_parent(trace), attributes=attributes, start_time=start_ns
        )
    finally:
        _NEXT.reset(token)


@contextmanager
def span(
    name: str,
    trace: TraceParent,
    *,
    span_id: str | None = None,
    attributes: Attributes | None = None,
) -> Iterator[TraceParent]:
    """A span of ``trace`` around the block (with id ``span_id`` if given); yields the trace
    with this span as the parent of what the block starts. A no-op when not ``enabled``."""
    if not _enabled:
        yield trace
        return
    from opentelemetry import trace as otel

    current = _start(name, trace, span_id, attributes)
    own = format(current.get_span_context().span_id, "016x")
    with otel.use_span(current, end_on_exit=True, record_exception=True):
        yield TraceParent(trace.trace_id, own, trace.flags)


def finished(
    name: str,
    spans: Iterable[tuple[TraceParent, str, Attributes]],
    start_ns: int,
) -> None:
    """Spans that ran from ``start_ns`` until now, one per (trace, span id, attributes): each
    task's publish, recorded once the broker (or the accept script) took it."""
    if not _enabled:
        return
    for trace, span_id, attributes in spans:
        _start(name, trace, span_id, attributes, start_ns).end()


def flush(timeout_ms: int = 5000) -> None:
    """Export the spans still buffered (a process about to exit)."""
    provider = _provider
    if provider is not None and _pid == os.getpid():
        provider.force_flush(timeout_ms)
