"""A task module for tests/worker/test_producer.py: a task that starts children every way the
producer offers inside a task (``ctx.start``, ``.apply_async``, ``.delay``, a Celery chain)."""

from __future__ import annotations

from typing import Any

from celery import chain
from pydantic import Field

from shared.handle import TaskHandle
from shared.registry import TaskContext, task
from shared.task_input import TaskInput
from worker.demo import add, count


class ParentInput(TaskInput):
    steps: int = Field(1, ge=1, le=10)


@task("ptest.parent", schema=ParentInput)
def parent(ctx: TaskContext, steps: int) -> dict[str, Any]:
    """Starts four children and a two-step chain; returns their ids."""
    by_ctx = ctx.start("demo.count", steps=steps, delay=0)
    by_object = ctx.start(add, value=2)
    by_call = count.apply_async(kwargs={"steps": steps, "delay": 0}, priority=5)
    by_delay = add.delay(value=1)
    last = chain(add.s(value=1), add.s(value=2)).apply_async()
    try:
        by_ctx.get(timeout=1)
        refused = False
    except RuntimeError:
        refused = True  # a task must not block its worker on another task
    return {
        "children": [h.id for h in (by_ctx, by_object, by_call, by_delay)],
        "chain_last": last.id,
        "chain_first": last.parent.id,
        "get_refused": refused,
        "is_handle": isinstance(by_ctx, TaskHandle),
    }
