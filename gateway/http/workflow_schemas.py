"""The OpenAPI components of ``/api/workflows``: the nested body, the tree and the snapshot.

A body is one of ``{"chain": [step, ...]}``, ``{"group": [step, ...]}`` and
``{"chord": {"header": [step, ...], "body": step}}``; a step is a submit body (``SubmitBody``)
without the options only a single submit takes, or, nested, another body. The limits the schema
cannot say (depth, tasks in all, carried copies, timing of later steps) are in the body's
description, written from the constants ``gateway.tasks.workflow_body`` checks and from this
gateway's settings, so the document says what the gateway refuses.

``WorkflowTree`` is the body's shape with each task as ``{"task_id", "task"}``
(``gateway.tasks.workflows.tree_of``); ``WorkflowSnapshot`` is what ``GET`` and ``DELETE
/api/workflows/{id}`` answer (``Workflows.snapshot``).
"""

from __future__ import annotations

from typing import Any

from gateway.tasks.workflow_body import (
    KINDS,
    MAX_CARRIED,
    MAX_DEPTH,
    MAX_STEPS,
    MAX_TASKS,
    STEP_REFUSED,
)
from shared.settings import Settings
from shared.status import TaskStatus

Schema = dict[str, Any]

# A child whose record is gone (it ended longer ago than TASKGATE_RETENTION_S) is listed so.
CHILD_GONE = "EXPIRED"
# The roll-up never says RETRYING: a retrying child makes its workflow RUNNING.
ROLLUP_STATUSES = [s for s in TaskStatus.__members__ if s != TaskStatus.RETRYING]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def only(key: str, value: Schema) -> Schema:
    """An object whose one member, required, is ``key``."""
    return {
        "type": "object",
        "properties": {key: value},
        "required": [key],
        "additionalProperties": False,
    }


def _nested(item: Schema, *, max_items: int | None = None) -> list[Schema]:
    """The chain, group and chord alternatives, lists of ``item`` (a chord's body: one)."""
    items: Schema = {"type": "array", "minItems": 1, "items": item}
    if max_items is not None:
        items["maxItems"] = max_items
    chord = {
        "type": "object",
        "properties": {"header": items, "body": item},
        "required": ["header", "body"],
        "additionalProperties": False,
    }
    return [only("chain", items), only("group", items), only("chord", chord)]


def workflow_body_schema(settings: Settings) -> Schema:
    """``POST /api/workflows``'s body, its limits in its description."""
    rabbit = " (this gateway's broker is RabbitMQ)" if settings.broker_is_amqp else ""
    description = (
        "A chain, group or chord of steps. A step is a task's submit body (without "
        f"{' or '.join(STEP_REFUSED)}) or, nested, another chain, group or chord. "
        f"At most {MAX_DEPTH} levels of nesting (the body's own is the first), "
        f"{MAX_STEPS} steps in one list, {MAX_TASKS} tasks in all, and {MAX_CARRIED} carried "
        "copies of later steps in all (each step's message carries every step after it). "
        "A part that later steps wait for (a step of a chord's header, or of a group that "
        "steps follow) must end in one task, not in a group. A later step (one handed on when "
        "the step before it ends) may wait (countdown, eta) at most the broker's visibility "
        f"timeout less its task's time limit (here {settings.visibility_timeout:g} s less "
        f"the task's own limit, else {settings.time_limit:g} s), and with RabbitMQ as the "
        f"broker takes no expires{rabbit}. Each refusal is a 422 naming the field by its "
        "path, such as chain[1].group[0].task."
    )
    return {
        "description": description,
        "oneOf": _nested(ref("WorkflowStep"), max_items=MAX_STEPS),
    }


def workflow_step_schema() -> Schema:
    """A task (a submit body without the single-submit options) or a nested body."""
    single_only = {"anyOf": [{"required": [name]} for name in STEP_REFUSED]}
    return {"anyOf": [{**ref("SubmitBody"), "not": single_only}, ref("WorkflowBody")]}


def workflow_tree_schema() -> Schema:
    """The body's shape, each task step as ``{"task_id", "task"}``."""
    task = {
        "type": "object",
        "properties": {"task_id": {"type": "string"}, "task": {"type": "string"}},
        "required": ["task_id", "task"],
        "additionalProperties": False,
    }
    return {"oneOf": [task, *_nested(ref("WorkflowTree"))]}


def workflow_ack_schema() -> Schema:
    """``POST /api/workflows``'s 202: the ids of every task step, in the body's order."""
    return {
        "type": "object",
        "properties": {
            "workflow_id": {"type": "string"},
            "kind": {"enum": list(KINDS)},
            "task_ids": {"type": "array", "items": {"type": "string"}},
            "tree": ref("WorkflowTree"),
        },
        "required": ["workflow_id", "kind", "task_ids", "tree"],
    }


def workflow_snapshot_schema() -> Schema:
    """The rolled-up state of a workflow and of each of its tasks."""
    percent = {"type": "number", "minimum": 0, "maximum": 100}
    child = {
        "type": "object",
        "properties": {
            "task_id": {"type": "string"},
            "task": {"type": ["string", "null"]},
            "status": {
                "enum": [*TaskStatus.__members__, CHILD_GONE],
                "description": f"{CHILD_GONE}: the task's record is gone (retention passed)",
            },
            "percent": percent,
            "seq": {"type": "integer", "minimum": 0},
        },
        "required": ["task_id", "task", "status", "percent", "seq"],
    }
    return {
        "type": "object",
        "properties": {
            "workflow_id": {"type": "string"},
            "kind": {"enum": list(KINDS)},
            "status": {"enum": ROLLUP_STATUSES},
            "seq": {
                "type": "integer",
                "minimum": 0,
                "description": "the sum of the tasks' seq: it rises with every change",
            },
            "percent": {
                **percent,
                "description": "the mean of the tasks' percent, never lower than one shown",
            },
            "created_at": {"type": "number"},
            "tree": {"anyOf": [ref("WorkflowTree"), {"type": "null"}]},
            "children": {"type": "array", "items": child},
        },
        "required": [
            "workflow_id", "kind", "status", "seq", "percent", "created_at", "tree", "children"
        ],
    }  # fmt: skip


def workflow_components(settings: Settings) -> dict[str, Schema]:
    """Every component the workflow operations refer to, by name."""
    return {
        "WorkflowBody": workflow_body_schema(settings),
        "WorkflowStep": workflow_step_schema(),
        "WorkflowTree": workflow_tree_schema(),
        "WorkflowSnapshot": workflow_snapshot_schema(),
    }
