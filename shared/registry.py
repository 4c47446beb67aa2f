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

from shared.errors import UnknownTask
from shared.inputs import InputSchema


class TaskContext(Protocol):
    """What a running task gets as its first argument."""

    task_id: str
    parent_result: Any  # a chain's previous result, or a chord's header results

    def progress(self, percent: float, message: str | None = None, **data: Any) -> None:
        """Report progress (0-100); raises ``TaskCancelled`` once a cancel was asked."""

    @property
    def cancelled(self) -> bool:
        """True once a cancel was asked, for tasks that stop on their own terms."""


TaskFn = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class TaskSpec:
    name: str
    fn: TaskFn
    schema: InputSchema
    queue: str = "fast"
    description: str = ""
    # Other queues a client may choose for this task (``queue`` in the submit body).
    queues: tuple[str, ...] = ()

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
) -> Callable[[TaskFn], TaskFn]:
    """Register ``fn`` under ``name``; the function itself is returned unchanged."""

    def register(fn: TaskFn) -> TaskFn:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.fn is not fn:
            raise ValueError(f"task name {name!r} is registered twice")
        doc = description or (fn.__doc__ or "").strip()
        _REGISTRY[name] = TaskSpec(name, fn, schema, queue, doc, queues)
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


def load_task_modules(modules: Iterable[str]) -> None:
    """Import each module so its ``@task`` decorators run."""
    for module in modules:
        importlib.import_module(module)
