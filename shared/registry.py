"""The task registry: a task is a plain function with a name, an input schema and a queue.

::

    from shared.registry import task
    from shared.inputs import Field, InputSchema

    @task("reports.build", queue="heavy", schema=InputSchema({"rows": Field("int", low=1)}))
    def build(ctx, rows):
        for i in range(rows):
            ctx.progress(100 * (i + 1) / rows, f"row {i + 1}")
        return {"rows": rows}

Only names in this registry can be submitted; the gateway and the workers import the same task
modules (``TASKGATE_TASK_MODULES``) so both know the same names.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from shared.errors import ConfigError, UnknownTask
from shared.inputs import InputSchema


class TaskContext(Protocol):
    """What a running task gets as its first argument."""

    task_id: str
    parent_result: Any  # a chain's previous result, or a chord's header results

    def progress(self, percent: float, message: str | None = None, **data: Any) -> None:
        """Report progress (0-100); raises ``TaskCancelled`` once a cancel was asked."""

    @property
    def attempt(self) -> int:
        """Which attempt this run is, from 1 (retries add one each)."""

    def retry(self, countdown: float | None = None, exc: BaseException | None = None) -> None:
        """Ask to run the task again (after ``countdown`` seconds, else the task's backoff);
        ``exc`` is the error recorded if no retry is left. Does not return."""

    @property
    def cancelled(self) -> bool:
        """True once a cancel was asked, for tasks that stop on their own terms."""


TaskFn = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When a task is run again: it raised one of ``retry_for`` (or called ``ctx.retry``), and
    it has had fewer than ``max_retries`` retries. The n-th retry waits ``countdown`` if given,
    else (``backoff``) ``backoff_s * 2**n`` capped at ``backoff_max_s``, drawn uniformly from 0
    to that with ``jitter`` (as Celery's ``retry_backoff``), else ``backoff_s``."""

    retry_for: tuple[type[BaseException], ...] = ()
    max_retries: int = 3
    backoff: bool = True
    backoff_s: float = 1.0
    backoff_max_s: float = 600.0
    jitter: bool = True

    def delay(self, retries: int, draw: Callable[[float, float], float]) -> float:
        """Seconds before retry number ``retries + 1`` (``draw``: ``random.uniform``)."""
        if not self.backoff:
            return self.backoff_s
        top = min(self.backoff_max_s, self.backoff_s * (2**retries))
        return draw(0.0, top) if self.jitter else top


@dataclass(frozen=True, slots=True)
class TaskSpec:
    name: str
    fn: TaskFn
    schema: InputSchema
    queue: str = "fast"
    description: str = ""
    # Other queues a client may choose for this task (``queue`` in the submit body).
    queues: tuple[str, ...] = ()
    # This task type's own limits, seconds (``None``: CELERY_TASK_SOFT_TIME_LIMIT /
    # CELERY_TASK_TIME_LIMIT). They travel in each message's ``timelimit`` header, which stock
    # workers enforce.
    soft_time_limit: float | None = None
    time_limit: float | None = None
    # Retries (see ``RetryPolicy``): the exception types that retry the task, and how.
    retry: RetryPolicy | None = None

    @property
    def timelimit(self) -> tuple[float | None, float | None]:
        """Celery's ``timelimit`` header: ``(hard, soft)``."""
        return (self.time_limit, self.soft_time_limit)

    def default_queue(self, routes: Sequence[tuple[str, str]] = ()) -> str:
        """The queue routing rules (``TASKGATE_ROUTES``, first match wins) give, else ``queue``."""
        return self.allowed_queues(routes)[0]

    def allowed_queues(self, routes: Sequence[tuple[str, str]] = ()) -> tuple[str, ...]:
        """The default queue first, then the others a client may choose."""
        return _allowed_queues(self.name, self.queue, self.queues, tuple(routes))


@functools.lru_cache(maxsize=4096)
def _allowed_queues(
    name: str, queue: str, queues: tuple[str, ...], routes: tuple[tuple[str, str], ...]
) -> tuple[str, ...]:
    default = next((q for pattern, q in routes if fnmatch.fnmatchcase(name, pattern)), queue)
    return (default, *[q for q in (queue, *queues) if q != default])


_REGISTRY: dict[str, TaskSpec] = {}


def task(
    name: str,
    *,
    schema: InputSchema,
    queue: str = "fast",
    queues: tuple[str, ...] = (),
    description: str = "",
    soft_time_limit: float | None = None,
    time_limit: float | None = None,
    retry_for: tuple[type[BaseException], ...] = (),
    max_retries: int | None = None,
    retry_backoff: bool | float = True,
    retry_backoff_max: float = 600.0,
    retry_jitter: bool = True,
) -> Callable[[TaskFn], TaskFn]:
    """Register ``fn`` under ``name``; the function itself is returned unchanged.

    ``soft_time_limit`` raises ``SoftTimeLimitExceeded`` inside the task (it ends TIMED_OUT);
    ``time_limit`` kills the process running it. Each must be above 0, and the soft one not
    above the hard one."""
    for label, limit in (("soft_time_limit", soft_time_limit), ("time_limit", time_limit)):
        if limit is not None and (isinstance(limit, bool) or not limit > 0):
            raise ValueError(f"task {name!r}: {label} must be a number of seconds above 0")
    if soft_time_limit is not None and time_limit is not None and soft_time_limit > time_limit:
        raise ValueError(f"task {name!r}: soft_time_limit is above time_limit")
    if max_retries is not None and (isinstance(max_retries, bool) or not 0 <= max_retries <= 100):
        raise ValueError(f"task {name!r}: max_retries must be from 0 to 100")
    policy = None
    if retry_for or max_retries is not None:
        # retry_backoff: True for 1 s doubling, a number for that first delay (as in Celery).
        first = 1.0 if retry_backoff is True else float(retry_backoff or 1.0)
        policy = RetryPolicy(
            tuple(retry_for),
            3 if max_retries is None else max_retries,
            backoff=bool(retry_backoff),
            backoff_s=first,
            backoff_max_s=float(retry_backoff_max),
            jitter=retry_jitter,
        )

    def register(fn: TaskFn) -> TaskFn:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.fn is not fn:
            raise ValueError(f"task name {name!r} is registered twice")
        doc = description or (fn.__doc__ or "").strip()
        _REGISTRY[name] = TaskSpec(
            name, fn, schema, queue, doc, queues, soft_time_limit, time_limit, policy
        )
        return fn

    return register


def get_task(name: Any) -> TaskSpec:
    """The spec registered under ``name``, or ``UnknownTask`` (422)."""
    spec = _REGISTRY.get(name) if isinstance(name, str) else None
    if spec is None:
        shown = name[:100] if isinstance(name, str) else type(name).__name__
        raise UnknownTask(f"unknown task {shown!r}", details={"field": "task"})
    return spec


def all_tasks() -> dict[str, TaskSpec]:
    return dict(_REGISTRY)


def check_time_limits(visibility_timeout: float) -> None:
    """Every task type's hard limit must be below the broker's visibility timeout, or its
    message becomes visible again while it may still run (a second run at the same time)."""
    for spec in _REGISTRY.values():
        if spec.time_limit is not None and spec.time_limit >= visibility_timeout:
            raise ConfigError(
                f"TASKGATE_VISIBILITY_TIMEOUT_S: {visibility_timeout:g}s must exceed the "
                f"time_limit of task {spec.name} ({spec.time_limit:g}s)"
            )


def load_task_modules(modules: Iterable[str]) -> None:
    """Import each module so its ``@task`` decorators run."""
    for module in modules:
        importlib.import_module(module)
