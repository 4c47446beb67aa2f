"""``GET /api/task-types``: the task types clients may submit, described from the registry.

Only registered tasks can be submitted (``shared.registry.get_task``); the internal Celery tasks
of the worker (``taskgate.sweep``, ``taskgate.webhook``) are not in the registry, so they are
neither submittable nor listed. Each entry::

    {"name": "demo.flaky", "queue": "fast", "queues": ["fast"], "description": "...",
     "input_schema": {"$schema": "https://json-schema.org/draft/2020-12/schema",
                      "type": "object", "properties": {...}, "required": [...],
                      "additionalProperties": false},
     "retries": {"max_retries": 5, "retry_for": ["FlakyError"], "backoff": true,
                 "backoff_s": 0.5, "backoff_max_s": 2.0, "jitter": true},
     "time_limit": {"soft": 1, "hard": 2}}

- ``queue`` is where a submit without ``queue`` goes (``TASKGATE_ROUTES`` applied), ``queues``
  every queue a submit may name, the default first.
- ``input_schema`` is ``InputSchema.json_schema()``, the rules the gateway and the worker check,
  with its dialect; an input left out or ``null`` means every field takes its default.
- ``retries`` only for a task declared with ``retry_for`` or ``max_retries``
  (``shared.registry.RetryPolicy``: the n-th retry waits ``backoff_s * 2**n`` capped at
  ``backoff_max_s`` with ``backoff``, drawn from 0 to that with ``jitter``; else ``backoff_s``).
  ``retry_for`` holds the exception class names, as ``error.type`` in a snapshot spells them.
  A task runs at most ``max_retries + 1`` times.
- ``time_limit`` only for a task declared with limits of its own: seconds, ``soft`` raising
  inside the task, ``hard`` killing its process; ``null`` for the one it leaves to the workers'
  defaults (``CELERY_TASK_SOFT_TIME_LIMIT``, ``CELERY_TASK_TIME_LIMIT``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from shared.registry import TaskSpec

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def describe_task_type(spec: TaskSpec, routes: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """One entry of ``GET /api/task-types`` (see the module's docstring)."""
    queues = spec.allowed_queues(routes)
    out: dict[str, Any] = {
        "name": spec.name,
        "queue": queues[0],
        "queues": list(queues),
        "description": spec.description,
        "input_schema": {"$schema": JSON_SCHEMA_DIALECT, **spec.schema.json_schema()},
    }
    policy = spec.retry
    if policy is not None:
        out["retries"] = {
            "max_retries": policy.max_retries,
            "retry_for": [exc.__name__ for exc in policy.retry_for],
            "backoff": policy.backoff,
            "backoff_s": policy.backoff_s,
            "backoff_max_s": policy.backoff_max_s,
            "jitter": policy.jitter,
        }
    if spec.soft_time_limit is not None or spec.time_limit is not None:
        out["time_limit"] = {"soft": spec.soft_time_limit, "hard": spec.time_limit}
    return out


def task_types(
    tasks: Mapping[str, TaskSpec], routes: Sequence[tuple[str, str]] = ()
) -> list[dict[str, Any]]:
    """Every task type of ``tasks``, by name."""
    return [describe_task_type(tasks[name], routes) for name in sorted(tasks)]


def task_type_schema() -> dict[str, Any]:
    """The JSON Schema of one entry, for the OpenAPI document."""
    seconds = {"type": ["number", "null"], "exclusiveMinimum": 0}
    return {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "queue": {"type": "string"},
            "queues": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            "description": {"type": "string"},
            "input_schema": {
                "type": "object",
                "description": "JSON Schema 2020-12 of the submit body's input",
            },
            "retries": {
                "type": "object",
                "properties": {
                    "max_retries": {"type": "integer", "minimum": 0},
                    "retry_for": {"type": "array", "items": {"type": "string"}},
                    "backoff": {"type": "boolean"},
                    "backoff_s": {"type": "number", "minimum": 0},
                    "backoff_max_s": {"type": "number", "minimum": 0},
                    "jitter": {"type": "boolean"},
                },
                "required": [
                    "max_retries",
                    "retry_for",
                    "backoff",
                    "backoff_s",
                    "backoff_max_s",
                    "jitter",
                ],
            },
            "time_limit": {
                "type": "object",
                "properties": {"soft": seconds, "hard": seconds},
                "required": ["soft", "hard"],
                "description": "seconds; null: the workers' default",
            },
        },
        "required": ["name", "queue", "queues", "description", "input_schema"],
    }
