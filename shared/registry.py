"""The task registry: a task is a plain function with a name, an input schema and a queue.

::

    from pydantic import Field
    from shared.registry import task
    from shared.task_input import TaskInput

    class BuildInput(TaskInput):
        rows: int = Field(ge=1, le=1_000_000)

    @task("reports.build", queue="heavy", schema=BuildInput)
    def build(ctx, rows: int):
        for i in range(rows):
            ctx.progress(100 * (i + 1) / rows, f"row {i + 1}")
        return {"rows": rows}

    build.delay(rows=10)                                  # from a view, a script, a task
    build.apply_async(kwargs={"rows": 10}, user="alice", countdown=60)
    chain(build.s(rows=10), publish.s()).apply_async()    # Celery's canvas

``@task`` returns a ``RegisteredTask``: still the function (``build(ctx, rows=1)`` calls it),
with Celery's producer API (``shared.producer``). Only names in this registry can be
submitted; the gateway and the workers import the same task modules
(``TASKGATE_TASK_MODULES``) so both know the same names.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterable
from typing import Any, Generic, ParamSpec, Protocol, TypeVar

from pydantic import BaseModel

from shared import producer
from shared.errors import ConfigError, UnknownTask
from shared.handle import TaskHandle
from shared.task_input import InputModel, NoInput
from shared.taskspec import RetryPolicy, TaskFn, TaskSpec, check_engine

__all__ = [
    "RayTaskContext",
    "RegisteredTask",
    "RetryPolicy",
    "TaskContext",
    "TaskFn",
    "TaskSpec",
    "all_tasks",
    "check_time_limits",
    "get_task",
    "load_task_modules",
    "task",
]

P = ParamSpec("P")
R = TypeVar("R")


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

    @property
    def owner(self) -> str:
        """The user this task belongs to (its children belong to them too)."""

    def start(self, task: str | RegisteredTask[..., Any], /, **input: Any) -> TaskHandle:
        """Start a child task (by name or ``@task`` object) owned by this task's user, with
        this task as its ``parent_id``; checked and recorded before it is published."""


class RayTaskContext(TaskContext, Protocol):
    """What a task declared ``engine="ray"`` gets (``worker.ray_side``): the same, run inside a
    Ray task, plus ``map``."""

    def map(self, fn: Callable[[TaskContext, Any], Any], items: Iterable[Any]) -> list[Any]:
        """Run ``fn(part_ctx, item)`` for each item as a Ray task of its own, in parallel; their
        results in the items' order. Each part's ``part_ctx.progress`` rolls up into this
        task's progress (the mean of the parts' percents)."""


class RegisteredTask(Generic[P, R]):
    """What ``@task`` returns: the function, callable as before, with Celery's producer API.

    ``delay`` / ``apply_async`` check the input, write the record and publish (or hold a
    delayed task until due), returning a ``TaskHandle``; ``s`` / ``si`` / ``signature`` make
    checked Celery signatures for ``chain``, ``group`` and ``chord``. Inside a running task,
    each starts a child owned by the same user (``shared.producer``)."""

    def __init__(self, spec: TaskSpec, fn: Callable[P, R]) -> None:
        self.spec = spec
        self._fn = fn
        functools.update_wrapper(self, fn)

    @property
    def name(self) -> str:
        return self.spec.name

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<taskgate task {self.spec.name}>"

    def delay(self, *args: Any, **input: Any) -> TaskHandle:
        """Send with this input (``apply_async(kwargs=input)``); positional input is refused."""
        return producer.send(self.spec, args, input)

    def apply_async(
        self,
        args: Any = None,
        kwargs: Any = None,
        *,
        countdown: float | None = None,
        eta: Any = None,
        expires: Any = None,
        priority: int | None = None,
        queue: str | None = None,
        headers: dict[str, Any] | None = None,
        user: str | None = None,
        task_id: str | None = None,
        **options: Any,
    ) -> TaskHandle:
        """Send with Celery's options: ``countdown`` (seconds) or ``eta`` (a datetime),
        ``expires`` (seconds or a datetime), ``priority`` (0-9, 9 most urgent), ``queue`` (one
        of the task's), ``headers``, ``task_id``; ``user`` (or the ``taskgate_user`` header)
        names the owner. Any other option is ``InvalidInput``."""
        return producer.send(
            self.spec,
            args,
            kwargs,
            countdown=countdown,
            eta=eta,
            expires=expires,
            priority=priority,
            queue=queue,
            headers=headers,
            user=user,
            task_id=task_id,
            **options,
        )

    def signature(
        self, args: Any = None, kwargs: Any = None, *, immutable: bool = False, **options: Any
    ) -> Any:
        """A checked Celery ``Signature``, for ``chain``, ``group`` and ``chord``; its record
        is written when a worker takes it. ``options``: ``priority``, ``queue``, ``headers``,
        ``user`` (as for ``apply_async``)."""
        return producer.signature(self.spec, args, kwargs, immutable=immutable, **options)

    def s(self, *args: Any, **input: Any) -> Any:
        """A signature with this input that takes the previous step's result in a chain."""
        return self.signature(args, input)

    def si(self, *args: Any, **input: Any) -> Any:
        """An immutable signature: the previous step's result is not passed to it."""
        return self.signature(args, input, immutable=True)


_REGISTRY: dict[str, TaskSpec] = {}


def task(
    name: str,
    *,
    schema: type[BaseModel] = NoInput,
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
    engine: str = "celery",
    ray_options: dict[str, Any] | None = None,
) -> Callable[[Callable[P, R]], RegisteredTask[P, R]]:
    """Register ``fn`` under ``name``; returns it as a ``RegisteredTask`` (callable as the
    function, with ``.delay()``, ``.apply_async()``, ``.s()``, ``.si()``).

    ``soft_time_limit`` raises ``SoftTimeLimitExceeded`` inside the task (it ends TIMED_OUT);
    ``time_limit`` kills the process running it. Each must be above 0, and the soft one not
    above the hard one. ``schema`` is the input's pydantic model (``shared.task_input``): a
    model that is not one, or lets unknown fields through, is a ``ConfigError`` here.

    ``engine="ray"`` runs the body on a Ray cluster (``worker.ray_engine``, the ``ray`` extra),
    each Ray task with ``ray_options`` (``num_cpus``, ``num_gpus``, ``memory``, ``resources``,
    ``accelerator_type``, ``runtime_env``); an unknown engine or option is a ``ValueError``
    here. Ray is not imported here: the gateway registers such tasks without it."""
    check_engine(name, engine, ray_options)
    for label, limit in (("soft_time_limit", soft_time_limit), ("time_limit", time_limit)):
        if limit is not None and (isinstance(limit, bool) or not limit > 0):
            raise ValueError(f"task {name!r}: {label} must be a number of seconds above 0")
    if soft_time_limit is not None and time_limit is not None and soft_time_limit > time_limit:
        raise ValueError(f"task {name!r}: soft_time_limit is above time_limit")
    if max_retries is not None and (isinstance(max_retries, bool) or not 0 <= max_retries <= 100):
        raise ValueError(f"task {name!r}: max_retries must be from 0 to 100")
    model = InputModel.of(schema, name)
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

    def register(fn: Callable[P, R]) -> RegisteredTask[P, R]:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.fn is not fn:
            raise ValueError(f"task name {name!r} is registered twice")
        doc = description or (fn.__doc__ or "").strip()
        spec = TaskSpec(
            name,
            fn,
            model,
            queue,
            doc,
            queues,
            soft_time_limit,
            time_limit,
            policy,
            engine,
            dict(ray_options or {}),
        )
        _REGISTRY[name] = spec
        return RegisteredTask(spec, fn)

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


UNREGISTERED = "unregistered"


def task_label(name: object) -> str:
    """A task name as a metric label: a registered name, else ``unregistered`` (so a stream of
    made-up names cannot create series). No copy of the registry: this runs per status change."""
    return name if isinstance(name, str) and name in _REGISTRY else UNREGISTERED


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
