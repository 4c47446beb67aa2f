"""The no-op task of P8 and P9, registered with taskgate: ``TASKGATE_TASK_MODULES=bench.tasks``.

It does nothing, so a run's cost is the runner's own (validation, the record's RUNNING and
terminal transitions, the heartbeat thread, the outbox copy's removal, metrics, tracing) on
top of Celery's.
"""

from __future__ import annotations

from shared.registry import TaskContext, task
from shared.task_input import NoInput

NAME = "bench.noop"


@task(NAME, schema=NoInput, queue="fast")
def noop(ctx: TaskContext) -> None:
    """Does nothing."""
    return None
