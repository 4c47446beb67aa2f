"""Tasks that misbehave on purpose, for the fault tests only.

Workers of the fault tests load them with
``TASKGATE_TASK_MODULES=worker.demo,tests.faults.tasks_faults``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from pydantic import Field

from shared.registry import TaskContext, task
from shared.task_input import TaskInput


def _note(path: str, line: str) -> None:
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


class StepsInput(TaskInput):
    steps: int = Field(10, ge=1, le=10000)
    delay: float = Field(0.1, ge=0, le=10)
    path: str = Field("", max_length=4096)


class PathInput(TaskInput):
    path: str = ""


class SecondsInput(TaskInput):
    seconds: float = Field(le=60)


class RetryLaterInput(TaskInput):
    countdown: float = Field(3, ge=0, le=60)
    path: str = ""


@task("faults.steps", queue="fast", schema=StepsInput)
def steps(ctx: TaskContext, steps: int, delay: float, path: str) -> dict[str, Any]:
    """demo.count that says which process runs it, and notes each run in ``path``."""
    _note(path, f"run {ctx.task_id} {os.getpid()}")
    for i in range(1, steps + 1):
        time.sleep(delay)
        ctx.progress(100.0 * i / steps, f"step {i} of {steps}", pid=os.getpid())
    return {"counted": steps}


@task("faults.die", queue="fast", schema=PathInput)
def die(ctx: TaskContext, path: str) -> None:
    """Kills its own worker process (a segfault, the OOM killer), every time it runs."""
    _note(path, f"run {ctx.task_id} {os.getpid()}")
    ctx.progress(10.0, "about to die")
    os._exit(137)


@task("faults.stubborn", queue="fast", schema=SecondsInput)
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
    schema=SecondsInput,
    soft_time_limit=1,
    time_limit=2,
)
def quick_limit(ctx: TaskContext, seconds: float) -> dict[str, Any]:
    """demo.sleep with limits of its own (1 s soft, 2 s hard), far below the workers' 6 s / 8 s."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.05)
    return {"slept": seconds}


@task("faults.hard_limit_only", queue="fast", schema=SecondsInput, time_limit=2)
def hard_limit_only(ctx: TaskContext, seconds: float) -> dict[str, Any]:
    """demo.sleep with a hard limit of its own (2 s) and no soft one, below the workers' 6 s
    soft limit."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.05)
    return {"slept": seconds}


@task(
    "faults.retry_later",
    queue="fast",
    schema=RetryLaterInput,
    max_retries=2,
)
def retry_later(ctx: TaskContext, countdown: float, path: str) -> dict[str, Any]:
    """Asks for a retry (``ctx.retry``) on its first attempt, then succeeds; notes each run."""
    _note(path, f"run {ctx.task_id} attempt {ctx.attempt} {os.getpid()}")
    if ctx.attempt == 1:
        ctx.retry(countdown=countdown)
    return {"attempts": ctx.attempt}


class BlobInput(TaskInput):
    size: int = Field(ge=0, le=8 * 1024 * 1024)


@task("faults.blob", queue="fast", schema=BlobInput)
def blob(ctx: TaskContext, size: int) -> dict[str, Any]:
    """A result of about ``size`` bytes of JSON."""
    return {"blob": "x" * size}


@task("faults.deaf", queue="fast", schema=SecondsInput)
def deaf(ctx: TaskContext, seconds: float) -> dict[str, Any]:
    """Sleeps without ever looking at ``ctx.cancelled``, then returns."""
    time.sleep(seconds)
    return {"slept": seconds}
