"""Tasks of the Ray tests (``TASKGATE_TASK_MODULES`` of their worker, imported by the Ray
workers too). Each reports the pid of the Ray worker process running it in its progress data,
so a test can kill that process."""

from __future__ import annotations

import os
import time
from typing import Any

from pydantic import Field

from shared.registry import RayTaskContext, TaskContext, task
from shared.task_input import TaskInput


class WaitInput(TaskInput):
    seconds: float = Field(60.0, ge=0, le=600)
    # Where each part writes the pid of the Ray worker running it (part i: ``<pid_dir>/i``).
    pid_dir: str | None = None


def _wait(ctx: TaskContext, seconds: float) -> None:
    """Report progress with this process's pid every 0.1 s for ``seconds``."""
    end = time.monotonic() + seconds
    start = time.monotonic()
    while (now := time.monotonic()) < end:
        ctx.progress(min(99.0, 100.0 * (now - start) / seconds), "waiting", pid=os.getpid())
        time.sleep(0.1)


@task(
    "tray.dies_once",
    queue="fast",
    schema=WaitInput,
    engine="ray",
    max_retries=2,
    retry_backoff=0.2,
    retry_jitter=False,
)
def dies_once(ctx: TaskContext, seconds: float, pid_dir: str | None) -> dict[str, Any]:
    """The first attempt waits (for a test to kill its Ray worker); later ones return."""
    if ctx.attempt == 1:
        _wait(ctx, seconds)
    return {"attempt": ctx.attempt, "pid": os.getpid()}


def _part(ctx: TaskContext, item: tuple[float, str | None]) -> int:
    seconds, pid_file = item
    if pid_file:
        with open(pid_file + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(pid_file + ".tmp", pid_file)
    _wait(ctx, seconds)
    return os.getpid()


@task("tray.part_dies", queue="fast", schema=WaitInput, engine="ray")
def part_dies(ctx: RayTaskContext, seconds: float, pid_dir: str | None) -> list[int]:
    """Two parts that wait; no retry policy: a killed part fails the task."""
    return ctx.map(_part, [(seconds, f"{pid_dir}/{i}" if pid_dir else None) for i in range(2)])


@task(
    "tray.forever",
    queue="fast",
    schema=WaitInput,
    engine="ray",
    soft_time_limit=2,
    time_limit=8,
)
def forever(ctx: RayTaskContext, seconds: float, pid_dir: str | None) -> list[int]:
    """Two parts that ignore their end: only the task's time limit stops them."""
    return ctx.map(_deaf, [seconds, seconds])


@task("tray.hard_limit", queue="fast", schema=WaitInput, engine="ray", time_limit=3)
def hard_limit(ctx: RayTaskContext, seconds: float, pid_dir: str | None) -> list[int]:
    """Two parts that ignore their end, and only a hard time limit: Celery kills the driver
    (the pool process) at 3 s, and Ray must end the tasks of the driver that died."""
    return ctx.map(_deaf, [seconds, seconds])


def _deaf(ctx: TaskContext, seconds: float) -> int:
    ctx.progress(1.0, "started", pid=os.getpid())
    time.sleep(seconds)  # never looks at ctx: only a forced cancel ends it early
    return os.getpid()


@task(
    "tray.patient",
    queue="fast",
    schema=WaitInput,
    engine="ray",
    max_retries=6,
    retry_backoff=1.0,
    retry_backoff_max=8.0,
    retry_jitter=False,
)
def patient(ctx: TaskContext, seconds: float, pid_dir: str | None) -> dict[str, Any]:
    """Returns at once, with a retry policy that outlasts a cluster coming up."""
    return {"attempt": ctx.attempt}


class BigInput(TaskInput):
    size: int = Field(ge=0, le=64 * 1024 * 1024)


@task("tray.big", queue="fast", schema=BigInput, engine="ray")
def big(ctx: TaskContext, size: int) -> dict[str, Any]:
    """A result of about ``size`` bytes."""
    return {"blob": "x" * size}


class WhereInput(TaskInput):
    out: str
    hold: float = Field(1.0, ge=0, le=30)


@task("tray.where", queue="fast", schema=WhereInput, engine="ray")
def where(ctx: TaskContext, out: str, hold: float) -> None:
    """Writes which cluster and which driver (Ray job) ran it to ``out``, after ``hold`` s (so
    that two of them overlap on two pool processes)."""
    import json

    import ray

    time.sleep(hold)
    runtime = ray.get_runtime_context()
    with open(out + ".tmp", "w") as f:
        json.dump({"gcs": runtime.gcs_address, "job": runtime.get_job_id()}, f)
    os.replace(out + ".tmp", out)


@task("tray.waits", queue="fast", schema=WaitInput, engine="ray")
def waits(ctx: TaskContext, seconds: float, pid_dir: str | None) -> dict[str, Any]:
    """Reports progress (and so checks its cancel) every 0.1 s for ``seconds``."""
    _wait(ctx, seconds)
    return {"waited": seconds}
