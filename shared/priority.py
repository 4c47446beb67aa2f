"""taskgate's task priorities: 0 to ``MAX_PRIORITY`` (9), 9 the most urgent, on both brokers.

A submit body's ``priority`` and a producer's ``apply_async(priority=)`` take this range
(``shared.submission.queue_and_priority``). RabbitMQ serves the highest priority first and
takes it as it is; kombu's Redis transport serves its priority lists from 0, so there it is
reversed (``redis_priority``).
"""

from __future__ import annotations

MAX_PRIORITY = 9


def redis_priority(priority: int) -> int:
    """taskgate's priority (9 = most urgent, as on RabbitMQ) to kombu-Redis's (0 first)."""
    return MAX_PRIORITY - max(0, min(MAX_PRIORITY, priority))


def broker_priority(priority: int, amqp: bool) -> int:
    """taskgate's priority as the broker's: RabbitMQ's as it is, kombu-Redis's reversed."""
    return priority if amqp else redis_priority(priority)
