"""Every Redis key and channel name taskgate uses, in one place.

All names start with the configured prefix (``TASKGATE_KEY_PREFIX``, default ``taskgate:``), so
that several deployments or test runs can share one Redis. The Celery broker's keys (queues,
unacked sets, pidbox channels) get the same prefix through kombu's ``global_keyprefix``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "taskgate:"

    def task(self, task_id: str) -> str:
        """Hash: one task's record (see ``shared.records``)."""
        return f"{self.prefix}task:{task_id}"

    def user_tasks(self, user: str) -> str:
        """Sorted set: every task of a user, scored by creation time."""
        return f"{self.prefix}user:{user}:tasks"

    def user_active(self, user: str) -> str:
        """Sorted set: the user's tasks that are not terminal, scored by creation time."""
        return f"{self.prefix}user:{user}:active"

    def user_ended(self, user: str) -> str:
        """Sorted set: the user's terminal tasks, scored by when they ended."""
        return f"{self.prefix}user:{user}:ended"

    @property
    def running(self) -> str:
        """Sorted set: RUNNING tasks scored by their last worker heartbeat (stall detection)."""
        return f"{self.prefix}running"

    def workflow(self, workflow_id: str) -> str:
        """Hash: a workflow's owner, kind, task ids, tree (the body's shape with each task's
        id) and ``percent``, the highest roll-up shown (see ``gateway.tasks.workflows``)."""
        return f"{self.prefix}workflow:{workflow_id}"

    @property
    def progress_channel(self) -> str:
        """Pub/sub channel: every change of every task (``shared.schema.Update``)."""
        return f"{self.prefix}progress"

    @property
    def broker_prefix(self) -> str:
        """kombu ``global_keyprefix`` for the Celery broker's keys on Redis."""
        return f"{self.prefix}broker:"

    @property
    def task_prefix(self) -> str:
        """What ``task`` puts before a task id: Lua scripts that find task ids inside Redis (in a
        set, or in a record) get this in ``KEYS`` and join it with the id."""
        return f"{self.prefix}task:"

    @property
    def user_prefix(self) -> str:
        """What the per-user keys start with (``user_tasks`` and the rest, for scans)."""
        return f"{self.prefix}user:"

    def idempotency(self, user: str, digest: str) -> str:
        """String: ``task_id|body-hash`` for one user's idempotency key (its SHA-256 digest)."""
        return f"{self.prefix}idem:{user}:{digest}"

    def submit_bucket(self, user: str) -> str:
        """Hash: the user's submit token bucket (``TASKGATE_SUBMIT_RATE``)."""
        return f"{self.prefix}rate:submit:{user}"

    @property
    def outbox(self) -> str:
        """Hash: message id -> the copy of each message published and not yet finished."""
        return f"{self.prefix}outbox"

    def outbox_times(self, queue: str) -> str:
        """Sorted set: the outbox's message ids of ``queue``, scored by publish time."""
        return f"{self.prefix}outbox:at:{queue}"

    def outbox_running(self, queue: str) -> str:
        """Sorted set: the outbox's ids of ``queue`` whose task started, scored by start time."""
        return f"{self.prefix}outbox:running:{queue}"

    @property
    def outbox_strikes(self) -> str:
        """Hash: message id -> how many sweeps saw it neither queued nor un-acked."""
        return f"{self.prefix}outbox:strikes"

    def webhook_lock(self, task_id: str) -> str:
        """String: held by the one worker delivering a task's webhook."""
        return f"{self.prefix}webhook-lock:{task_id}"

    def broker_queue(self, queue: str) -> str:
        """List: kombu's Redis queue ``queue`` (priority 0; others add a separator and digit)."""
        return f"{self.broker_prefix}{queue}"

    def broker_queues(self, queue: str) -> tuple[str, ...]:
        """Lists: kombu's Redis queue ``queue`` at each priority, 0 (``broker_queue``) to 9.

        kombu names a priority list after the queue, a separator (``\\x06\\x16``) and the
        digit; the separator must match ``gateway.broker.redis_broker``'s."""
        base = self.broker_queue(queue)
        return (base, *(f"{base}{_PRIORITY_SEP}{p}" for p in range(1, 10)))

    @property
    def broker_unacked(self) -> str:
        """Hash: kombu's un-acked messages (delivery tag -> message)."""
        return f"{self.broker_prefix}unacked"

    @property
    def delayed(self) -> str:
        """Sorted set: ids of tasks submitted with ``countdown`` or ``eta``, scored by when
        they are due (``gateway.tasks.delayed``)."""
        return f"{self.prefix}delayed"

    @property
    def delayed_messages(self) -> str:
        """Hash: task id -> the Celery message a delayed task is published with when due."""
        return f"{self.prefix}delayed:messages"

    @property
    def delayed_lock(self) -> str:
        """String: held by the one gateway moving due delayed messages to the broker."""
        return f"{self.prefix}delayed:lock"

    def chord_meta(self, group_id: str) -> str:
        """What Celery's Redis backend puts before a chord's counter keys (``.c``, ``.s``)."""
        return f"{self.broker_prefix}celery-taskset-meta-{group_id}"


def new_task_ids(n: int) -> list[str]:
    """``n`` random UUIDs (version 4, RFC 4122 variant) as text, from one read of the OS's
    random source (``uuid.uuid4`` reads it once per id)."""
    raw = os.urandom(16 * n).hex()
    out = []
    for i in range(0, 32 * n, 32):
        h = raw[i : i + 32]
        out.append(f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}")
    return out


# kombu's separator between a queue's name and the priority of one of its lists.
_PRIORITY_SEP = "\x06\x16"

# The high two bits of the variant nibble are 10: 0-3 -> 8-b (the rest of it kept).
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}
