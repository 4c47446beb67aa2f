"""Celery's producer API for taskgate tasks: check, write the record, then publish.

Every ``@task`` object (``shared.registry.RegisteredTask``) sends through the ``Producer``
here: ``.delay(**input)`` and ``.apply_async(kwargs=, countdown=, eta=, expires=, priority=,
queue=, headers=, user=, task_id=)`` from any synchronous code (a Django or Flask view, a
script, a task), and ``.s()`` / ``.si()`` for Celery's own ``chain``, ``group`` and ``chord``.

A send does what the gateway does with a submit body, in the same order:

1. checks the input against the task's input model (``shared.task_input``) and the options
   against the contract (``shared.send_options``); a bad one is ``InvalidInput`` naming it,
   and nothing is written;
2. writes the PENDING record (``create.lua``, with the owner's ``TASKGATE_MAX_ACTIVE`` quota:
   ``RateLimited`` when full);
3. publishes the Celery message (protocol 2, JSON, with the task type's ``timelimit`` and the
   ``taskgate_record`` header the gateway's messages carry), through a task-less Celery app on
   the workers' broker (``shared.celery_config``). A delayed task (``countdown``, ``eta``) is
   held in Redis instead (``Keys.delayed``, in ``shared.delayed_layout``'s layout), where the
   mover that every gateway runs (``gateway.tasks.delayed``) publishes it when due; no gateway
   running, it waits PENDING. If the broker refuses, the record is taken back and
   ``BrokerUnavailable`` raised;
4. announces the PENDING snapshot on the progress channel, and returns a ``TaskHandle``.

The owner: ``user=``, else the ``taskgate_user`` header, else (inside a task) the owner of the
task running, else ``TASKGATE_SERVICE_USER``. Inside a task the child's record also names the
task running as its ``parent_id``. The trace (``shared.tracing``): a ``traceparent`` in
``headers=``, else (inside a task) the running task's, else a new one; the record's
``trace_id`` and the message's ``traceparent`` header say it.

Signatures (``.s()``, ``.si()``, ``.signature()``) are checked the same way when built, but get
their record when a worker takes them (``worker.adopt``), as any canvas sent with Celery's
own API: a signature may be built and never sent, and Celery picks its id only then. They carry
the owner (``taskgate_user``) when one is known and, inside a task, the parent
(``taskgate_parent``) and its trace (``traceparent``).

``producer()`` is the process's producer, built from the environment (``Settings.from_env``)
on first use; ``configure(settings)`` puts another in its place (tests, an app that reads its
settings elsewhere).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from shared.celery_config import REDIS_PUBLISH_TIMEOUTS, celery_config
from shared.current_task import RunningTask, running_task
from shared.delayed_layout import pack
from shared.errors import BrokerUnavailable, Conflict, RateLimited, StoreUnavailable
from shared.handle import TaskHandle
from shared.headers import HEADER_USER, PARENT_HEADER, RECORDED_HEADER, TRACE_HEADER
from shared.keys import new_task_ids
from shared.priority import broker_priority
from shared.records import CreateCode, SyncRecords, new_record_fields
from shared.redis_client import sync_client
from shared.send_options import Send, check_send
from shared.settings import Settings
from shared.store_errors import STORE_FAILURES, store_unavailable
from shared.submission import field_error
from shared.task_message import TaskMessage
from shared.taskspec import TaskSpec
from shared.tracing import TraceParent, new_trace, parse_traceparent, span_id_of

if TYPE_CHECKING:
    from celery import Celery

# How often a record that got no message is discarded before giving up (0.25 s apart).
_TAKE_BACK_TRIES = 4
log = logging.getLogger("taskgate.producer")


class Producer:
    """Sends tasks of ``settings``' deployment from synchronous code; safe to share between
    threads. Its Celery app is made on first send, and again in a process forked after that
    (a web server's workers, a Celery pool): broker connections never cross a fork (redis-py's
    pool, behind the records, sees to that itself)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        client = sync_client(settings.require_redis(), socket_timeout=10, socket_connect_timeout=5)
        self.records = SyncRecords(client, settings.keys, settings.retention_s)
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._app: Celery | None = None

    @property
    def app(self) -> Celery:
        """A Celery app without tasks on the workers' broker (made on first use)."""
        with self._lock:
            if self._pid != os.getpid():
                # The parent's app stays the parent's: dropped here, not closed.
                self._pid, self._app = os.getpid(), None
            if self._app is None:
                from celery import Celery

                self._app = Celery("taskgate-producer", set_as_current=False)
                conf = celery_config(self.settings)
                if not self.settings.broker_is_amqp:
                    # A frozen broker fails the send (BrokerUnavailable), it never hangs it.
                    options = conf["broker_transport_options"]
                    conf["broker_transport_options"] = {**options, **REDIS_PUBLISH_TIMEOUTS}
                self._app.conf.update(conf)
            return self._app

    def close(self) -> None:
        """Close the broker connections and the Redis client's (a later call opens them
        again)."""
        with self._lock:
            app, self._app = self._app, None
        if app is not None:
            app.close()
        self.records.client.close()

    def handle(self, task_id: str) -> TaskHandle:
        """A handle on any task id (one sent with Celery's own API too)."""
        return TaskHandle(task_id, self.records)

    def check(
        self,
        spec: TaskSpec,
        args: Any = None,
        kwargs: Any = None,
        *,
        parent: RunningTask | None = None,
        **options: Any,
    ) -> Send:
        """The call checked for this deployment (``send_options.check_send``)."""
        return check_send(self.settings, spec, args, kwargs, parent=parent, **options)

    # -- Sending ------------------------------------------------------------------------------

    def send(self, call: Send) -> TaskHandle:
        """Write the PENDING record, then publish (or hold until due), then announce it."""
        sub = call.sub
        owner = call.owner or self.settings.service_user
        task_id = call.task_id or new_task_ids(1)[0]
        extra: dict[str, Any] = {}
        if sub.due_at is not None:
            extra["eta"] = sub.due_at
        if call.parent_id is not None:
            extra["parent_id"] = call.parent_id
        trace = _trace(call)
        extra["trace_id"] = trace.trace_id
        traceparent = trace.header(span_id_of(task_id))
        fields = new_record_fields(task_id, sub.spec.name, sub.queue, time.time(), extra)
        records = self.records
        max_active = self.settings.max_active
        try:
            code, payload = records.create(owner, fields, max_active)
        except STORE_FAILURES as exc:
            # The create may have run with its reply lost: take it back, so that no record
            # waits for a message that will never come.
            self._take_back(owner, task_id)
            raise store_unavailable(exc) from exc
        if code == CreateCode.AT_QUOTA:
            raise RateLimited(
                f"too many active tasks (limit {max_active})",
                retry_after=1.0,
                details={"active": int(payload)},
            )
        if code != CreateCode.CREATED and call.task_id is not None:
            raise Conflict(f"task id {task_id} is taken", details={"field": "task_id"})
        if code != CreateCode.CREATED:
            # A fresh random id that exists: only a create whose reply was lost and was sent
            # again meets it (as on the gateway).
            raise StoreUnavailable(f"task store did not confirm the create (code {code}); retry")
        try:
            if sub.due_at is None:
                self._publish(call, task_id, traceparent)
            else:
                self._hold(call, task_id, sub.due_at, traceparent)
        except BaseException:
            # Nothing stays accepted: a record without a message would wait forever.
            self._take_back(owner, task_id)
            raise
        try:
            records.publish_snapshot(owner, payload)
        except STORE_FAILURES:
            log.warning("task %s accepted but its PENDING update was not published", task_id)
        log.info("task %s (%s) sent for %s", task_id, sub.spec.name, owner)
        return TaskHandle(task_id, records)

    def _take_back(self, owner: str, task_id: str) -> None:
        """Discard a record that got no message, trying for about a second through a short
        outage; a record that cannot be discarded is logged by id (it ends at retention)."""
        for attempt in range(_TAKE_BACK_TRIES):
            try:
                self.records.discard(owner, task_id)
                return
            except STORE_FAILURES as exc:
                if attempt == _TAKE_BACK_TRIES - 1:
                    log.error(
                        "task %s has a record but no message, and discarding it failed (%s); "
                        "it stays PENDING until TASKGATE_RETENTION_S",
                        task_id,
                        exc,
                    )
                    return
                time.sleep(0.25)

    def _headers(self, call: Send, traceparent: str) -> dict[str, Any]:
        return {**call.headers, RECORDED_HEADER: True, TRACE_HEADER: traceparent}

    def _publish(self, call: Send, task_id: str, traceparent: str) -> None:
        from kombu.exceptions import OperationalError

        sub = call.sub
        refused: tuple[type[BaseException], ...] = (OperationalError, *STORE_FAILURES)
        expires = _when(sub.expires_at)
        try:
            self.app.send_task(
                sub.spec.name,
                args=(),
                kwargs=sub.input,
                task_id=task_id,
                queue=sub.queue,
                priority=broker_priority(sub.priority, self.settings.broker_is_amqp),
                expires=expires,
                time_limit=sub.spec.time_limit,
                soft_time_limit=sub.spec.soft_time_limit,
                headers=self._headers(call, traceparent),
                parent_id=call.parent_id,
            )
        except refused as exc:
            raise BrokerUnavailable(f"broker unreachable: {type(exc).__name__}") from exc

    def _hold(self, call: Send, task_id: str, due_at: float, traceparent: str) -> None:
        """Keep the message until due where the gateways' mover (``gateway.tasks.delayed``)
        publishes it from: ``Keys.delayed`` scored by the due time, the message in
        ``Keys.delayed_messages`` (``shared.delayed_layout``)."""
        sub = call.sub
        message = self.app.amqp.as_task_v2(
            task_id,
            sub.spec.name,
            args=[],
            kwargs=sub.input,
            expires=_when(sub.expires_at),
            time_limit=sub.spec.time_limit,
            soft_time_limit=sub.spec.soft_time_limit,
            parent_id=call.parent_id,
            root_id=self._root_id(task_id),
        )
        held = TaskMessage(
            task_id,
            sub.spec.name,
            sub.queue,
            sub.priority,
            {**message.headers, **self._headers(call, traceparent)},
            orjson.dumps(list(message.body)),
        )
        keys = self.settings.keys
        try:
            with self.records.client.pipeline(transaction=True) as pipe:
                pipe.hset(keys.delayed_messages, task_id, pack(held))
                pipe.zadd(keys.delayed, {task_id: due_at})
                pipe.execute()
        except STORE_FAILURES as exc:
            raise store_unavailable(exc) from exc

    def _root_id(self, task_id: str) -> str:
        """The first task of this one's lineage, as Celery's ``send_task`` finds it."""
        worker_task = self.app.current_worker_task
        if worker_task is None:
            return task_id
        request = worker_task.request
        return str(request.root_id or request.id)

    def signature(self, call: Send, *, immutable: bool = False) -> Any:
        """A Celery ``Signature`` of the checked call, for ``chain``, ``group``, ``chord``.

        Its record is written when a worker takes it (``worker.adopt``): owned by the owner it
        carries (``taskgate_user``), else the service user; inside a task, linked to it."""
        from celery import Signature

        sub = call.sub
        headers = dict(call.headers)
        if call.owner is not None:
            headers[HEADER_USER] = call.owner
        if call.parent_id is not None:
            headers[PARENT_HEADER] = call.parent_id
            inherited = _running_trace()
            if inherited is not None and TRACE_HEADER not in headers:
                headers[TRACE_HEADER] = inherited.header(span_id_of(call.parent_id))
        options: dict[str, Any] = {
            "queue": sub.queue,
            "priority": broker_priority(sub.priority, self.settings.broker_is_amqp),
            "time_limit": sub.spec.time_limit,
            "soft_time_limit": sub.spec.soft_time_limit,
        }
        if headers:
            options["headers"] = headers
        return Signature(sub.spec.name, (), sub.input, options, immutable=immutable, app=self.app)


def _running_trace() -> TraceParent | None:
    """The trace of the task running here (its ``ctx.trace_id``), if any."""
    trace_id = getattr(running_task(), "trace_id", None)
    return TraceParent(trace_id) if isinstance(trace_id, str) and trace_id else None


def _trace(call: Send) -> TraceParent:
    """The trace a send belongs to: its ``traceparent`` header, else the running task's (a
    child shares its parent's), else a new one."""
    given = call.headers.get(TRACE_HEADER)
    if given is not None:
        try:
            return parse_traceparent(given)
        except ValueError as exc:
            raise field_error(f"headers.{TRACE_HEADER}", str(exc)) from None
    return _running_trace() or new_trace()


def _when(at: float | None) -> datetime | None:
    return datetime.fromtimestamp(at, UTC) if at is not None else None


_default: Producer | None = None
_default_lock = threading.Lock()


def producer() -> Producer:
    """The process's producer: ``configure``'s, else one for ``Settings.from_env()``."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Producer(Settings.from_env())
    return _default


def configure(settings: Settings | None) -> Producer | None:
    """Send with ``settings`` from now on (``None``: from the environment again, on next
    use); the previous producer is closed. Returns the new one."""
    global _default
    with _default_lock:
        old, _default = _default, (Producer(settings) if settings is not None else None)
    if old is not None:
        old.close()
    return _default


def send(spec: TaskSpec, args: Any = None, kwargs: Any = None, **options: Any) -> TaskHandle:
    """Check, record and publish one task with the process's producer; inside a task, as its
    child (``current_task``)."""
    p = producer()
    return p.send(p.check(spec, args, kwargs, parent=running_task(), **options))


def signature(
    spec: TaskSpec, args: Any = None, kwargs: Any = None, *, immutable: bool = False, **options: Any
) -> Any:
    """A checked Celery ``Signature`` with the process's producer (see ``Producer.signature``);
    timing options and ``task_id`` are refused (Celery sets those for a canvas)."""
    for name in ("countdown", "eta", "expires", "task_id"):
        if options.get(name) is not None:
            raise field_error(name, "is not accepted by a signature")
    p = producer()
    call = p.check(spec, args, kwargs, parent=running_task(), **options)
    return p.signature(call, immutable=immutable)
