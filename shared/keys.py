"""Every Redis key and channel name taskgate uses, in one place.

All names start with the configured prefix (``TASKGATE_KEY_PREFIX``, default ``taskgate:``), so
that several deployments or test runs can share one Redis. The Celery broker's keys (queues,
unacked sets, pidbox channels) get the same prefix through kombu's ``global_keyprefix``.
"""

from __future__ import annotations

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
