"""Tasks that misbehave on purpose, for the fault tests only.

Workers of the fault tests load them with
``TASKGATE_TASK_MODULES=worker.demo,tests.faults.tasks_faults``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from shared.inputs import Field, InputSchema
from shared.registry import TaskContext, task


def _note(path: str, line: str) -> None:
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


@task(
    "faults.steps",
    queue="fast",
    schema=InputSchema(
        {
            "steps": Field("int", default=10, low=1, high=10000),
            "delay": Field("float", default=0.1, low=0, high=10),
            "path": Field("str", default="", max_length=4096),
        }
    ),
)
def steps(ctx: TaskContext, steps: int, delay: float, path: str) -> dict[str, Any]:
    """demo.count that says which process runs it, and notes each run in ``path``."""
    _note(path, f"run {ctx.task_id} {os.getpid()}")
    for i in range(1, steps + 1):
        time.sleep(delay)
        ctx.progress(100.0 * i / steps, f"step {i} of {steps}", pid=os.getpid())
    return {"counted": steps}


@task("faults.die", queue="fast", schema=InputSchema({"path": Field("str", default="")}))
def die(ctx: TaskContext, path: str) -> None:
    """Kills its own worker process (a segfault, the OOM killer), every time it runs."""
    _note(path, f"run {ctx.task_id} {os.getpid()}")
    ctx.progress(10.0, "about to die")
    os._exit(137)


@task("faults.stubborn", queue="fast", schema=InputSchema({"seconds": Field("float", high=60)}))
def stubborn(ctx: TaskContext, seconds: float) -> dict[str, Any]:
    """Ignores the soft time limit, so only the hard limit can stop it."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            time.sleep(0.05)
        except SoftTimeLimitExceeded:
            ctx.progress(50.0, "ignoring the soft time limit")
    return {"slept": seconds}


@task(
    "faults.quick_limit",
    queue="fast",
    schema=InputSchema({"seconds": Field("float", high=60)}),
    soft_time_limit=1,
    time_limit=2,
)
def quick_limit(ctx: TaskContext, seconds: float) -> dict[str, Any]:
    """demo.sleep with limits of its own (1 s soft, 2 s hard), far below the workers' 6 s / 8 s."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.05)
    return {"slept": seconds}


@task(
    "faults.retry_later",
    queue="fast",
    schema=InputSchema(
        {"countdown": Field("float", default=3, low=0, high=60), "path": Field("str", default="")}
    ),
    max_retries=2,
)
def retry_later(ctx: TaskContext, countdown: float, path: str) -> dict[str, Any]:
    """Asks for a retry (``ctx.retry``) on its first attempt, then succeeds; notes each run."""
    _note(path, f"run {ctx.task_id} attempt {ctx.attempt} {os.getpid()}")
    if ctx.attempt == 1:
        ctx.retry(countdown=countdown)
    return {"attempts": ctx.attempt}
