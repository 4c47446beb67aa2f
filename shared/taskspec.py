"""What a registered task type is: its name, function, input schema, queues, limits, retries.

``shared.registry`` builds these (``@task``) and keeps them by name; the producer
(``shared.producer``), the gateway and the workers read them.
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.task_input import InputModel

TaskFn = Callable[..., Any]

# Where a task's body runs (``worker.engines``): the Celery worker process that took it, or a
# Ray cluster (``TASKGATE_RAY_ADDRESS``, the ``ray`` extra; ``worker.ray_engine``).
ENGINES = ("celery", "ray")
# The options a Ray-engine task may give its Ray tasks (``ray.remote`` options), with what each
# must be. Ray's own retries are not among them: a lost Ray worker is retried by the task's
# retry policy, like any other failure.
RAY_OPTIONS = {
    "num_cpus": "a number of CPUs, at least 0",
    "num_gpus": "a number of GPUs, at least 0",
    "memory": "bytes of memory, an integer above 0",
    "resources": "a mapping of custom resource names to amounts, each at least 0",
    "accelerator_type": "an accelerator type name",
    "runtime_env": "a Ray runtime environment (a mapping)",
}


def _amount(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def check_engine(name: str, engine: object, ray_options: Mapping[str, Any] | None) -> None:
    """A ``ValueError`` naming the task unless ``engine`` and ``ray_options`` are usable: known
    at registration, not when a worker first runs the task."""
    if engine not in ENGINES:
        raise ValueError(
            f"task {name!r}: engine must be one of {', '.join(ENGINES)}, not {engine!r}"
        )
    if ray_options is None:
        return
    if engine != "ray":
        raise ValueError(f"task {name!r}: ray_options need engine='ray'")
    if not isinstance(ray_options, Mapping):
        raise ValueError(f"task {name!r}: ray_options must be a mapping")
    for key, value in ray_options.items():
        if key not in RAY_OPTIONS:
            known = ", ".join(sorted(RAY_OPTIONS))
            raise ValueError(f"task {name!r}: unknown ray_options key {key!r} (known: {known})")
        ok = {
            "num_cpus": _amount(value),
            "num_gpus": _amount(value),
            "memory": isinstance(value, int) and not isinstance(value, bool) and value > 0,
            "resources": isinstance(value, Mapping)
            and all(isinstance(k, str) and _amount(v) for k, v in value.items()),
            "accelerator_type": isinstance(value, str) and bool(value),
            "runtime_env": isinstance(value, Mapping),
        }[key]
        if not ok:
            raise ValueError(f"task {name!r}: ray_options[{key!r}] must be {RAY_OPTIONS[key]}")


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
    schema: InputModel
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
    # Where the body runs (``ENGINES``) and, for ``ray``, its Ray tasks' options.
    engine: str = "celery"
    ray_options: Mapping[str, Any] = field(default_factory=dict)

    def soft_limit_under(self, worker_soft: float) -> float | None:
        """The soft limit to register with Celery for this task on a worker whose own soft
        limit is ``worker_soft`` (``None``: the worker's). A task with only a hard limit at or
        below ``worker_soft`` gets that hard limit as its soft one too: billiard starts the hard
        timer only once the soft one fired, so the worker's larger soft limit would put the kill
        off until then (stock Celery does exactly that)."""
        if self.soft_time_limit is not None:
            return self.soft_time_limit
        if self.time_limit is not None and self.time_limit <= worker_soft:
            return self.time_limit
        return None

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
