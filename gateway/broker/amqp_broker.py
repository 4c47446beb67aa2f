"""Publishing task messages to RabbitMQ with aio-pika, with publisher confirms.

``AmqpBroker`` has the interface of ``gateway.broker.redis_broker.RedisBroker`` (the ``Broker``
protocol).
A publish returns only once RabbitMQ confirmed every message (so a 202 means the broker has
it); a nack, an unroutable message, a lost connection or no answer within ``timeout`` seconds
raises ``BrokerUnavailable`` (503). Nothing here blocks the event loop: aio-pika is asyncio
through and through, and every wait is bounded.

What goes on the wire is what Celery itself sends for a task routed to a queue of direct
type: Celery turns such a publish into one on the default (nameless) exchange with the queue
name as routing key (``celery.app.amqp.AMQP.send_task_message``). Queues are declared before
the first publish to them, with the same arguments the worker's kombu declares
(``shared.celery_config``: durable, ``x-max-priority`` 10); RabbitMQ refuses a second
declaration whose arguments differ (``PRECONDITION_FAILED``), so the two must stay in step.

taskgate's priority (0-9, 9 most urgent) is RabbitMQ's priority as it is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection

from gateway.broker.message import TaskMessage
from shared.celery_config import MAX_PRIORITY
from shared.errors import BrokerUnavailable

log = logging.getLogger("taskgate.broker")

# The ``x-max-priority`` the workers declare their queues with (shared/celery_config.py).
QUEUE_MAX_PRIORITY = MAX_PRIORITY
QUEUE_ARGUMENTS: dict[str, Any] = {"x-max-priority": QUEUE_MAX_PRIORITY}

_FAILURES = (
    aiormq.exceptions.AMQPError,
    aio_pika.exceptions.AMQPException,
    ConnectionError,
    OSError,
    TimeoutError,
    RuntimeError,  # aio-pika raises it for a channel or connection that closed under it
)


class AmqpBroker:
    """One connection and one confirming channel, opened on first use and after any failure."""

    def __init__(self, url: str, *, timeout: float = 3.0) -> None:
        self.url = url
        self.timeout = timeout
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._declared: set[str] = set()
        self._lock = asyncio.Lock()

    async def _ready_channel(self) -> AbstractChannel:
        """The confirming channel, (re)connecting if needed. Call within a timeout."""
        channel = self._channel
        if channel is not None and not channel.is_closed:
            return channel
        async with self._lock:
            if self._channel is not None and not self._channel.is_closed:
                return self._channel
            await self._reset()
            connection = await aio_pika.connect(self.url, timeout=self.timeout)
            try:
                # on_return_raises: a message no queue takes is an error, not a silent loss.
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            except BaseException:
                await connection.close()
                raise
            self._connection, self._channel = connection, channel
            return channel

    async def _declare(self, channel: AbstractChannel, queues: set[str]) -> None:
        for name in sorted(queues - self._declared):
            await channel.declare_queue(name, durable=True, arguments=QUEUE_ARGUMENTS)
            self._declared.add(name)

    async def publish(self, messages: Sequence[TaskMessage]) -> None:
        """Publish every message and wait for all the confirms; raise ``BrokerUnavailable``."""
        if not messages:
            return
        try:
            async with asyncio.timeout(self.timeout):
                channel = await self._ready_channel()
                await self._declare(channel, {m.queue for m in messages})
                exchange = channel.default_exchange
                # Published back to back; the confirms come back pipelined.
                await asyncio.gather(
                    *(
                        exchange.publish(_amqp_message(m), routing_key=m.queue, mandatory=True)
                        for m in messages
                    )
                )
        except aio_pika.exceptions.DeliveryError as exc:  # a nack, or returned as unroutable
            await self._fail(exc)
            raise BrokerUnavailable(f"broker refused the message: {_describe(exc)}") from exc
        except _FAILURES as exc:
            await self._fail(exc)
            raise BrokerUnavailable(f"broker unreachable: {_describe(exc)}") from exc

    async def ping(self) -> None:
        """A round trip on the broker: open and close a channel."""
        try:
            async with asyncio.timeout(self.timeout):
                await self._ready_channel()
                assert self._connection is not None
                probe = await self._connection.channel(publisher_confirms=False)
                await probe.close()
        except _FAILURES as exc:
            await self._fail(exc)
            raise BrokerUnavailable(f"broker unreachable: {_describe(exc)}") from exc

    async def queue_depths(self, queues: Sequence[str]) -> dict[str, int]:
        """Messages ready in each queue (a passive declare; a missing queue counts 0)."""
        depths: dict[str, int] = {}
        try:
            async with asyncio.timeout(self.timeout):
                await self._ready_channel()
                assert self._connection is not None
                probe: AbstractChannel | None = None
                for name in queues:
                    if probe is None or probe.is_closed:
                        probe = await self._connection.channel(publisher_confirms=False)
                    try:
                        queue = await probe.declare_queue(name, passive=True)
                    except aiormq.exceptions.ChannelNotFoundEntity:
                        depths[name] = 0  # the server closed ``probe``; the next gets a new one
                        continue
                    result = queue.declaration_result
                    depths[name] = int(result.message_count or 0)
                if probe is not None and not probe.is_closed:
                    await probe.close()
        except _FAILURES as exc:
            await self._fail(exc)
            raise BrokerUnavailable(f"broker unreachable: {_describe(exc)}") from exc
        return depths

    async def _fail(self, exc: BaseException) -> None:
        log.warning("AMQP broker failure: %s", _describe(exc))
        await self._reset()

    async def _reset(self) -> None:
        """Drop the connection; the next call opens a new one."""
        connection, self._connection, self._channel = self._connection, None, None
        self._declared.clear()
        if connection is not None and not connection.is_closed:
            try:
                async with asyncio.timeout(self.timeout):
                    await connection.close()
            except _FAILURES as exc:
                log.debug("closing the AMQP connection failed: %s", _describe(exc))

    async def close(self) -> None:
        await self._reset()


def _amqp_message(msg: TaskMessage) -> aio_pika.Message:
    return aio_pika.Message(
        msg.body,
        headers=msg.headers,
        content_type="application/json",
        content_encoding="utf-8",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=max(0, min(QUEUE_MAX_PRIORITY - 1, msg.priority)),
        correlation_id=msg.task_id,
    )


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__
