"""Where a task's body runs: in the Celery worker process that took it (the default), or
handed to another engine by the task's ``engine`` (``@task(..., engine=...)``).

``invoke`` is the one call the runner (``worker.runner``) makes to run a task's function; the
record transitions, heartbeats, retries and the result stay the runner's whatever the engine.
``engine="ray"`` (the ``ray`` extra) runs it on a Ray cluster: ``worker.ray_engine``, imported
on the first such task only, so a worker (or a gateway) without Ray tasks never loads Ray.
"""

from __future__ import annotations

from typing import Any

from shared.taskspec import TaskSpec
from worker.context import Context


def invoke(spec: TaskSpec, ctx: Context, data: dict[str, Any]) -> Any:
    """Run ``spec``'s function with its context and checked input; its result."""
    if spec.engine == "ray":
        from worker.ray_engine import invoke_ray

        return invoke_ray(spec, ctx, data)
    return spec.fn(ctx, **data)
