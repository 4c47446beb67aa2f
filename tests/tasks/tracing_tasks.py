"""A task module for tests/tasks/test_tracing.py: tasks that tell which trace they ran in."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import Field

from shared.registry import TaskContext, task
from shared.task_input import TaskInput

log = logging.getLogger("tests.tracing")


class Empty(TaskInput):
    pass


class Children(TaskInput):
    count: int = Field(1, ge=1, le=5)


@task("ttest.trace", schema=Empty)
def trace(ctx: TaskContext) -> dict[str, Any]:
    """Returns ``ctx.trace_id``, after a log line of its own."""
    log.info("tracing task running")
    return {"trace_id": ctx.trace_id}  # type: ignore[attr-defined]


@task("ttest.parent", schema=Children)
def parent(ctx: TaskContext, count: int) -> dict[str, Any]:
    """Starts ``count`` ``ttest.trace`` children (``ctx.start`` and ``.delay``)."""
    first = ctx.start("ttest.trace")  # type: ignore[attr-defined]
    rest = [trace.delay() for _ in range(count - 1)]
    return {"trace_id": ctx.trace_id, "children": [h.id for h in [first, *rest]]}  # type: ignore[attr-defined]
