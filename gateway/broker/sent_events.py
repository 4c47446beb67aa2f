"""Celery ``task-sent`` events for the tasks the gateway publishes, so Flower shows them as sent.

Celery's ``task_send_sent_event`` (``shared.celery_config``) makes Celery's own producer
(``apply_async``, ``send_task``) announce each message it publishes. The gateway writes its
messages itself (``gateway.broker``), so it announces them here, with the fields Celery's event
has (``celery.app.amqp``): uuid, root_id, parent_id, name, the args and kwargs reprs, retries,
eta, expires, queue, exchange, routing_key, and the time of the publish as its timestamp.

Events are a side channel: they never slow or fail a submit. ``SentEvents.announce`` runs on the
event loop and only puts the messages on a queue (no lock, no I/O); a daemon thread sends them
with Celery's ``EventDispatcher`` over a kombu connection of its own, on the workers' broker
under their ``global_keyprefix``, where Flower and ``celery events`` listen; as a worker does,
it sends them in lists (a ``task.multi`` message of up to ``EVENTS_PER_MESSAGE``), which every
Celery event receiver takes, gathering for ``GATHER_S`` what queues meanwhile. At most
``capacity`` messages wait: beyond that they are dropped and counted (``dropped_full``). When
the broker does not take an event, the thread drops the batch it holds (``dropped_offline``),
waits (exponential backoff with jitter, capped) and connects again; the batches queued
meanwhile are sent once it is back.

Which publishes count: every ``publish`` of the broker (``AnnouncingBroker``,
``AnnouncingOutbox``: single and batch submits, workflows, delayed tasks when they are due and
go to their queue) and the messages the record script pushes itself (``Acceptor`` calls
``AnnouncingOutbox.announce``). A message the outbox sweep puts back is the same message again,
not announced twice.

With ``task_send_sent_event`` off (``CELERY_TASK_SEND_SENT_EVENT=0``, ``sends_sent_events``),
``open_sent_events`` yields ``None``: the broker is not wrapped and no thread starts. On, the
counts (``SentEvents.outcomes``) are on ``GET /metrics`` as ``taskgate_sent_events_total``
(``sent_events_of`` finds them on the broker).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import random
import socket
import threading
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from gateway.broker.message import TaskMessage
from gateway.broker.outbox import OutboxBroker
from gateway.broker.redis_broker import Broker
from shared.celery_config import REDIS_PUBLISH_TIMEOUTS, celery_config
from shared.settings import Settings

log = logging.getLogger("taskgate.sent_events")

CAPACITY = 10_000
EVENTS_PER_MESSAGE = 200
# The thread gathers what is queued for this long before it sends (unless it already has a full
# message's worth), so that at high submit rates a broker message carries up to
# EVENTS_PER_MESSAGE events instead of one submit group's few: a publish per group cost the
# gateway about half its CPU under P1's load (bench/p1_submit.py). Flower sees them this much later.
GATHER_S = 0.02
GATHER_MAX = 10 * EVENTS_PER_MESSAGE
BACKOFF_S = 0.5
BACKOFF_MAX_S = 30.0
CLOSE_TIMEOUT_S = 5.0
# A drop is logged at most this often (with the totals so far).
DROP_LOG_EVERY_S = 60.0

_Batch = tuple[float, tuple[TaskMessage, ...]]


def sends_sent_events(settings: Settings) -> bool:
    """Whether producers announce what they send (Celery's ``task_send_sent_event``)."""
    return bool(celery_config(settings)["task_send_sent_event"])


def sent_event(message: TaskMessage, at: float) -> dict[str, Any]:
    """The fields of ``message``'s ``task-sent`` event, published at ``at`` (Unix time)."""
    headers = message.headers
    return {
        "uuid": message.task_id,
        "root_id": headers.get("root_id"),
        "parent_id": headers.get("parent_id"),
        "name": message.task,
        "args": headers.get("argsrepr"),
        "kwargs": headers.get("kwargsrepr"),
        "retries": headers.get("retries", 0),
        "eta": headers.get("eta"),
        "expires": headers.get("expires"),
        # Both brokers publish to the default exchange with the queue as routing key.
        "queue": message.queue,
        "exchange": "",
        "routing_key": message.queue,
        "timestamp": at,
    }


class SentEvents:
    """Announces published messages as ``task-sent`` events from a thread of its own.

    Each counter has one writer (the loop or the thread), so none needs a lock."""

    def __init__(
        self, settings: Settings, *, capacity: int = CAPACITY, hostname: str | None = None
    ) -> None:
        self.settings = settings
        self.capacity = capacity
        self.hostname = hostname or f"taskgate@{socket.gethostname()}"
        self._queue: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._queued = 0  # loop
        self._taken = 0  # thread
        self.sent = 0  # thread
        self.dropped_full = 0  # loop
        self.dropped_offline = 0  # thread
        self._drop_logged = 0.0

    @property
    def dropped(self) -> int:
        return self.dropped_full + self.dropped_offline

    def outcomes(self) -> dict[str, int]:
        """The events handled so far, by outcome: sent, or dropped (queue full, broker away)."""
        return {
            "sent": self.sent,
            "dropped_full": self.dropped_full,
            "dropped_offline": self.dropped_offline,
        }

    @property
    def waiting(self) -> int:
        """Messages announced and not yet handled by the thread."""
        return self._queued - self._taken

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="taskgate-sent-events", daemon=True)
        self._thread.start()

    def announce(self, messages: Sequence[TaskMessage], at: float | None = None) -> None:
        """Queue the events of ``messages``, published at ``at`` (Unix time; now if ``None``);
        never blocks (what does not fit is dropped, counted)."""
        room = self.capacity - self.waiting
        if len(messages) > room:
            self.dropped_full += len(messages) - max(0, room)
            self._log_drop("the queue of events is full")
            messages = messages[: max(0, room)]
        if not messages:
            return
        self._queued += len(messages)
        self._queue.put((time.time() if at is None else at, tuple(messages)))

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Send what is queued (unless the broker is away) and stop; blocks up to ``timeout``."""
        self._stop.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def _log_drop(self, why: str) -> None:
        now = time.monotonic()
        if now - self._drop_logged >= DROP_LOG_EVERY_S:
            self._drop_logged = now
            log.warning(
                "task-sent events dropped (%s): %d so far (%d queue full, %d broker away)",
                why, self.dropped, self.dropped_full, self.dropped_offline,
            )  # fmt: skip

    def _run(self) -> None:
        from celery import Celery

        app = Celery("taskgate-events", set_as_current=False)
        app.conf.update(celery_config(self.settings))
        # On Redis, no wait without an end: a frozen broker costs a timeout, not the thread.
        bounded = {} if self.settings.broker_is_amqp else dict(REDIS_PUBLISH_TIMEOUTS)
        connection: Any = None
        dispatcher: Any = None
        failures = 0
        try:
            stopping = False
            while not stopping and (batch := self._queue.get()) is not None:
                items = [(batch[0], m) for m in batch[1]]
                if len(items) < EVENTS_PER_MESSAGE and not self._stop.is_set():
                    time.sleep(GATHER_S)
                while len(items) < GATHER_MAX:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        stopping = True
                        break
                    items.extend((more[0], m) for m in more[1])
                done = 0
                try:
                    if failures and self._stop.is_set():
                        raise ConnectionError("closing while the broker is away")
                    if dispatcher is None:
                        connection = app.connection_for_write(transport_options=bounded)
                        connection.ensure_connection(max_retries=0)
                        # Buffered: one broker message carries a list of up to
                        # EVENTS_PER_MESSAGE events (as a worker's; Celery's receivers, Flower's
                        # too, take such lists), flushed here, never on its own.
                        dispatcher = app.events.Dispatcher(
                            connection,
                            hostname=self.hostname,
                            buffer_while_offline=False,
                            buffer_group=["task"],
                            buffer_limit=EVENTS_PER_MESSAGE + 1,
                        )
                    for start in range(0, len(items), EVENTS_PER_MESSAGE):
                        part = items[start : start + EVENTS_PER_MESSAGE]
                        for at, message in part:
                            dispatcher.send("task-sent", **sent_event(message, at))
                        dispatcher.flush(errors=False)
                        done += len(part)
                    failures = 0
                except Exception as exc:
                    # Whatever the transport raises: the events are best effort, the thread
                    # must go on.
                    self.dropped_offline += len(items) - done
                    self._log_drop(f"{type(exc).__name__}: {exc}"[:200])
                    _release(connection)
                    connection = dispatcher = None
                    failures += 1
                    top = min(BACKOFF_MAX_S, BACKOFF_S * 2 ** min(failures, 16))
                    self._stop.wait(random.uniform(top / 2, top))
                finally:
                    self.sent += done
                    self._taken += len(items)
        finally:
            _release(connection)


def _release(connection: Any) -> None:
    if connection is not None:
        with contextlib.suppress(Exception):
            connection.release()


@contextlib.asynccontextmanager
async def open_sent_events(settings: Settings) -> AsyncIterator[SentEvents | None]:
    """The announcer, running, if ``settings`` send sent events; else ``None``."""
    if not sends_sent_events(settings):
        yield None
        return
    events = SentEvents(settings)
    events.start()
    try:
        yield events
    finally:
        await asyncio.to_thread(events.close)


class AnnouncingBroker:
    """A broker (Redis without the outbox, RabbitMQ) that announces what it published."""

    def __init__(self, inner: Broker, events: SentEvents) -> None:
        self.inner = inner
        self.events = events

    async def publish(self, messages: Sequence[TaskMessage]) -> None:
        # The time before the publish: a worker may take a message before publish returns.
        at = time.time()
        await self.inner.publish(messages)
        self.events.announce(messages, at)

    def __getattr__(self, name: str) -> Any:
        # ping, queue_depths, close and the rest: the broker's own.
        return getattr(self.inner, name)


class AnnouncingOutbox(OutboxBroker):
    """The outbox broker, announcing what it published and what the record script pushed."""

    def __init__(self, outbox: OutboxBroker, events: SentEvents) -> None:
        super().__init__(outbox.inner, outbox.keys)
        self.events = events

    async def publish(self, messages: Sequence[TaskMessage]) -> None:
        at = time.time()
        await super().publish(messages)
        self.events.announce(messages, at)

    def announce(self, messages: Sequence[TaskMessage], at: float) -> None:
        """``messages`` went out in a record script run started at ``at``
        (``OutboxBroker.inline``)."""
        self.events.announce(messages, at)


def announcing(broker: Broker, events: SentEvents | None) -> Broker:
    """``broker``, announcing its publishes to ``events`` (unchanged when ``None``)."""
    if events is None:
        return broker
    if isinstance(broker, OutboxBroker):
        return AnnouncingOutbox(broker, events)
    return AnnouncingBroker(broker, events)


def sent_events_of(broker: Broker) -> SentEvents | None:
    """The announcer ``broker`` reports to, if it is one of ``announcing``'s; else ``None``."""
    if isinstance(broker, AnnouncingBroker | AnnouncingOutbox):
        return broker.events
    return None
