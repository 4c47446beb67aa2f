"""What a registered task type is: its name, function, input schema, queues, limits, retries.

``shared.registry`` builds these (``@task``) and keeps them by name; the producer
(``shared.producer``), the gateway and the workers read them.
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from shared.task_input import InputModel

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
