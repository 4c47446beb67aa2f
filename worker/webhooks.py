"""Completion webhooks, delivered by the workers as an internal Celery task.

When a task reaches its terminal status, the worker that recorded it sends the internal task
``taskgate.webhook`` to its own queue (``taskgate.webhooks``, which every worker consumes in
addition to its ``-Q`` queues). That task POSTs the snapshot to the ``callback_url``, signed,
and records each attempt in the snapshot's ``webhook`` field (``ANNOTATE_LUA``); a failed
attempt is retried with Celery's ``retry`` (a new message with a countdown, so the retry lives
in the broker and survives restarts) until ``TASKGATE_WEBHOOK_MAX_ATTEMPTS``.

The task is registered on the Celery app only, never in taskgate's registry: clients cannot
submit it. docs/WEBHOOKS.md explains the design.
"""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import time
from typing import Any

import orjson
from celery import Celery, Task
from celery.signals import celeryd_after_setup
from kombu import Queue  # type: ignore[attr-defined]

from shared.celery_config import task_queue
from shared.records import SyncAnnotations, SyncRecords
from shared.settings import Settings
from shared.status import TERMINAL_NAMES
from shared.webhooks import (
    ATTEMPT_HEADER,
    SIGNATURE_HEADER,
    TASK_HEADER,
    TIMESTAMP_HEADER,
    WebhookPolicy,
    WebhookRefused,
    backoff_delay,
    sign,
    signing_secret,
)
from worker.metrics import metrics
from worker.store import RecordsPerProcess

log = logging.getLogger("taskgate.webhooks")

WEBHOOK_TASK = "taskgate.webhook"
WEBHOOK_QUEUE = "taskgate.webhooks"
_USER_AGENT = "taskgate-webhook/1"
_MAX_RESPONSE_READ = 64 * 1024
# The Celery app whose workers deliver (set by ``register_webhooks``; one per process).
_app: Celery | None = None


def webhook_queue() -> Queue:
    # Declared as the task queues are: RabbitMQ refuses a redeclaration that differs.
    return task_queue(WEBHOOK_QUEUE)


def register_webhooks(app: Celery, records: RecordsPerProcess, settings: Settings) -> None:
    """Declare the webhook queue, make every worker consume it, register the delivery task."""
    global _app
    _app = app
    app.conf.task_queues = [*(app.conf.task_queues or ()), webhook_queue()]

    @celeryd_after_setup.connect(weak=False)  # type: ignore[untyped-decorator]
    def _consume_webhooks(sender: Any = None, instance: Any = None, **_: Any) -> None:
        if instance is not None and getattr(instance, "app", None) is app:
            instance.app.amqp.queues.select_add(webhook_queue())

    @app.task(  # type: ignore[untyped-decorator]
        name=WEBHOOK_TASK, shared=False, bind=True, ignore_result=True, max_retries=None
    )
    def deliver(self: Task, task_id: str) -> str:
        outcome, delay = Delivery(records.get(), settings).attempt(task_id)
        if delay is not None:
            raise self.retry(countdown=delay, max_retries=None)
        return outcome


def after_terminal(records: SyncRecords, task_id: str, snapshot: bytes | None) -> None:
    """Queue the webhook of a task that just ended, if it has one still pending.

    ``snapshot`` is the terminal snapshot when the caller has it; ``None`` makes this read the
    record (a task that had already ended, e.g. cancelled while queued). Never raises: a
    webhook that cannot be queued must not change how the task itself ends.
    """
    if _app is None:
        return
    if snapshot is not None and b'"webhook":{' not in snapshot:
        return  # the common case: no callback_url, no Redis call
    try:
        annotations = SyncAnnotations(records.client, records.keys)
        raw = annotations.read(task_id, "webhook")
        if not raw or raw == b"null":
            return
        info = orjson.loads(raw)
        if not isinstance(info, dict) or info.get("state") != "pending":
            return
        _app.send_task(WEBHOOK_TASK, args=[task_id], queue=WEBHOOK_QUEUE)
    except Exception:
        log.exception("could not queue the webhook of task %s", task_id)


class Delivery:
    """One delivery attempt of one task's webhook."""

    def __init__(self, records: SyncRecords, settings: Settings) -> None:
        self.records = records
        self.settings = settings
        self.annotations = SyncAnnotations(records.client, records.keys)
        self.policy = WebhookPolicy.from_settings(settings)

    def attempt(self, task_id: str) -> tuple[str, float | None]:
        """Try once; return (outcome, seconds until the next try or None)."""
        raw = self.annotations.read(task_id, "webhook")
        info = orjson.loads(raw) if raw else None
        if not isinstance(info, dict) or info.get("state") != "pending":
            return "nothing to do", None
        snap = self.records.snapshot(task_id)
        if snap is None or snap["status"] not in TERMINAL_NAMES:
            return "task not ended", None
        lock = self.records.keys.webhook_lock(task_id)
        ttl = int(self.settings.webhook_timeout_s * 3) + 10
        if not self.records.client.set(lock, "1", nx=True, ex=ttl):
            return "another delivery is in progress", None
        try:
            return self._attempt(task_id, raw, info, dict(snap))
        finally:
            self.records.client.delete(lock)

    def _attempt(
        self, task_id: str, raw: bytes | None, info: dict[str, Any], snap: dict[str, Any]
    ) -> tuple[str, float | None]:
        snap.pop("webhook", None)
        body = orjson.dumps(snap)
        attempts = int(info.get("attempts") or 0) + 1
        status: int | None = None
        error: str | None = None
        final = False
        try:
            status = self._post(str(info.get("url")), body, task_id, attempts)
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except WebhookRefused as exc:
            error, final = f"refused: {exc}", True
        except (OSError, http.client.HTTPException, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        if error is None:
            state = "delivered"
        elif final or attempts >= self.settings.webhook_max_attempts:
            state = "failed"
        else:
            state = "pending"
        new = {
            **info,
            "state": state,
            "attempts": attempts,
            "last_status": status,
            "last_error": error,
            "updated_at": time.time(),
        }
        result = self.annotations.annotate(task_id, "webhook", new, expect=raw)
        if not result.applied:
            return "state changed meanwhile", None
        # Counted once the attempt is recorded (one deliverer's annotation wins).
        metrics().webhooks.labels("retrying" if state == "pending" else state).inc()
        if state != "pending":
            log.info("webhook of %s %s after %d attempt(s)", task_id, state, attempts)
            return state, None
        delay = backoff_delay(
            attempts,
            self.settings.webhook_backoff_s,
            # A retry waits in the worker un-acked; on Redis it must come due well within the
            # visibility timeout, or the broker would hand it to a second worker.
            min(self.settings.webhook_backoff_max_s, self.settings.visibility_timeout / 2),
        )
        log.info("webhook of %s failed (%s); attempt %d in %.1fs", task_id, error,
                 attempts + 1, delay)  # fmt: skip
        return "retrying", delay

    def _post(self, url: str, body: bytes, task_id: str, attempt: int) -> int:
        parts = self.policy.check_url(url)
        secret = signing_secret(self.settings)
        if secret is None:
            raise WebhookRefused("no signing secret (TASKGATE_WEBHOOK_SECRET) is configured")
        host = (parts.hostname or "").rstrip(".")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        # Resolve now and check every address: what the name pointed to at submit time says
        # nothing about what it points to now. Then connect to a checked address only.
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = [str(info[4][0]) for info in infos]
        self.policy.check_addresses(addresses)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": _USER_AGENT,
            SIGNATURE_HEADER: sign(secret, body),
            TIMESTAMP_HEADER: str(int(time.time())),
            TASK_HEADER: task_id,
            ATTEMPT_HEADER: str(attempt),
        }
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        last: OSError | None = None
        for address in dict.fromkeys(addresses):
            conn = _pinned_connection(parts.scheme, host, port, address, self.settings)
            try:
                conn.request("POST", target, body=body, headers=headers)
                response = conn.getresponse()
                response.read(_MAX_RESPONSE_READ)
                return response.status
            except ConnectionRefusedError as exc:
                last = exc  # try the next address
            finally:
                conn.close()
        assert last is not None
        raise last


class _PinnedHTTP(http.client.HTTPConnection):
    """Connects to one already-checked address; ``Host`` still names the host."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """As ``_PinnedHTTP``, with TLS verified against the host name (SNI too)."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        self._tls = ssl.create_default_context()
        super().__init__(host, port, timeout=timeout, context=self._tls)
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)


def _pinned_connection(
    scheme: str, host: str, port: int, address: str, settings: Settings
) -> http.client.HTTPConnection:
    timeout = settings.webhook_timeout_s
    if scheme == "https":
        return _PinnedHTTPS(host, port, address, timeout)
    return _PinnedHTTP(host, port, address, timeout)
