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
        """Hash: a workflow's owner, kind and child task ids (see ``gateway.workflows``)."""
        return f"{self.prefix}workflow:{workflow_id}"

    @property
    def progress_channel(self) -> str:
        """Pub/sub channel: every change of every task (``shared.schema.Update``)."""
        return f"{self.prefix}progress"

    @property
    def broker_prefix(self) -> str:
        """kombu ``global_keyprefix`` for the Celery broker's keys on Redis."""
        return f"{self.prefix}broker:"

    # Lua scripts build the per-user keys themselves from these fragments; keep them in step with
    # the methods above.
    USER_PART = "user:"


def new_task_ids(n: int) -> list[str]:
    """``n`` random UUIDs (version 4, RFC 4122 variant) as text, from one read of the OS's
    random source (``uuid.uuid4`` reads it once per id)."""
    raw = os.urandom(16 * n).hex()
    out = []
    for i in range(0, 32 * n, 32):
        h = raw[i : i + 32]
        out.append(f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}")
    return out


# The high two bits of the variant nibble are 10: 0-3 -> 8-b (the rest of it kept).
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}
