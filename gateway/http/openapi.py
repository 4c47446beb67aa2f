"""``GET /api/openapi.json``: the OpenAPI 3.1 description of the HTTP API, built from the app.

Each operation is one function below, registered with ``@operation(method, path)``; the document
lists only the operations whose route the app's router really has, so it never describes an
endpoint that is not there. Task inputs come from the registry (``InputSchema.json_schema()``),
so the submit body's schema is exactly what the gateway checks. The workflow components (the
nested body, its tree, its snapshot) are ``gateway.http.workflow_schemas``'s.

To document a new endpoint: add one decorated function here, returning its operation object.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.appkeys import SETTINGS
from gateway.broker.redis_broker import MAX_PRIORITY
from gateway.http.task_types import task_type_schema
from gateway.http.workflow_schemas import workflow_ack_schema, workflow_components
from gateway.tasks.service import MAX_BATCH
from gateway.tasks.submission import IDEMPOTENCY_KEY_MAX, MAX_DELAY_S
from shared.registry import TaskSpec, all_tasks
from shared.schema import snapshot_json_schema
from shared.settings import Settings
from shared.status import TaskStatus
from shared.webhooks import MAX_URL_LENGTH

OPENAPI_VERSION = "3.1.0"
JSON = "application/json"
Schema = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Context:
    """What an operation's description may depend on."""

    settings: Settings
    tasks: dict[str, TaskSpec]


OperationFn = Callable[[Context], Schema]
OPERATIONS: dict[tuple[str, str], OperationFn] = {}

_ERROR_TEXT = {
    "400": "Malformed request: not JSON, wrong content type, bad query value",
    "401": "No token, or a bad or expired one",
    "403": "The request's Origin is not allowed",
    "404": "No such task (or another user's)",
    "408": "Timed out",
    "409": "Idempotency key reused with another body",
    "413": "Request body too large",
    "422": "Invalid input: unknown task, an option the API does not take, or input that fails "
    "the task's schema (`details.field` names the field)",
    "429": "Rate or quota exceeded; see `Retry-After`",
    "503": "Broker or task store unreachable: nothing was accepted",
}


def operation(method: str, path: str) -> Callable[[OperationFn], OperationFn]:
    """Register the description of ``method path`` (the path as aiohttp's router spells it)."""

    def register(fn: OperationFn) -> OperationFn:
        OPERATIONS[(method.upper(), path)] = fn
        return fn

    return register


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def json_body(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def listing(key: str, item: Schema) -> Schema:
    """An object whose one member ``key`` is an array of ``item``."""
    return {
        "type": "object",
        "properties": {key: {"type": "array", "items": item}},
        "required": [key],
    }


def errors(*codes: str) -> dict[str, Schema]:
    out: dict[str, Schema] = {}
    for code in codes:
        response = json_body(ref("Error"), _ERROR_TEXT[code])
        if code == "429":
            response["headers"] = {
                "Retry-After": {
                    "description": "Seconds to wait before trying again",
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                    "required": True,
                }
            }
        out[code] = response
    return out


API_ERRORS = ("401", "403", "429", "503")
BODY_ERRORS = ("400", "408", "413", "422")


def _task_id_param() -> Schema:
    return {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}}


# ---- operations -------------------------------------------------------------------------------


@operation("POST", "/api/tasks")
def _submit(ctx: Context) -> Schema:
    return {
        "summary": "Submit a task",
        "operationId": "submitTask",
        "requestBody": {"required": True, "content": {JSON: {"schema": ref("SubmitBody")}}},
        "responses": {
            "202": json_body(ref("Snapshot"), "Accepted: the task's first snapshot (PENDING)"),
            **errors(*BODY_ERRORS, "409", *API_ERRORS),
        },
    }


@operation("POST", "/api/tasks/batch")
def _submit_batch(ctx: Context) -> Schema:
    accepted = {
        "type": "object",
        "properties": {"task_id": {"type": "string"}, "seq": {"type": "integer"}},
        "required": ["task_id", "seq"],
    }
    item = {"anyOf": [accepted, ref("Error")]}
    # Items are not constrained here: each one is checked on its own (as POST /api/tasks) and
    # a bad one gets its error in its place, while the others go on.
    tasks = {"type": "array", "minItems": 1, "maxItems": MAX_BATCH, "items": {}}
    return {
        "summary": "Submit many tasks; each item is answered in order",
        "operationId": "submitBatch",
        "requestBody": {
            "required": True,
            "content": {
                JSON: {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "tasks": tasks,
                            "idempotency_key": {
                                "type": "string",
                                "minLength": 1,
                                "maxLength": IDEMPOTENCY_KEY_MAX - 6,
                                "description": "Keys each item <key>#<index>: sent again, "
                                "the batch creates none of its tasks twice",
                            },
                        },
                        "required": ["tasks"],
                        "additionalProperties": False,
                    }
                }
            },
        },
        "responses": {
            "202": json_body(
                {
                    "type": "object",
                    "properties": {"tasks": {"type": "array", "items": item}},
                    "required": ["tasks"],
                },
                "One answer per item, in order",
            ),
            **errors(*BODY_ERRORS, *API_ERRORS),
        },
    }


@operation("GET", "/api/tasks")
def _list(ctx: Context) -> Schema:
    return {
        "summary": "The caller's tasks, newest first",
        "operationId": "listTasks",
        "parameters": [
            {
                "name": "status",
                "in": "query",
                "required": False,
                # Empty means no filter (``?status=&limit=``).
                "schema": {"type": "string", "enum": ["", *TaskStatus.__members__]},
            },
            {
                "name": "limit",
                "in": "query",
                "required": False,
                "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
            },
        ],
        "responses": {
            "200": json_body(listing("tasks", ref("Snapshot")), "The caller's tasks"),
            **errors("400", *API_ERRORS),
        },
    }


@operation("GET", "/api/tasks/{task_id}")
def _get(ctx: Context) -> Schema:
    return {
        "summary": "A task's snapshot",
        "operationId": "getTask",
        "parameters": [_task_id_param()],
        "responses": {
            "200": json_body(ref("Snapshot"), "The task's current snapshot"),
            **errors("404", *API_ERRORS),
        },
    }


@operation("DELETE", "/api/tasks/{task_id}")
def _cancel(ctx: Context) -> Schema:
    return {
        "summary": "Cancel a task (it ends CANCELLED unless it already ended)",
        "operationId": "cancelTask",
        "parameters": [_task_id_param()],
        "responses": {
            "202": json_body(ref("Snapshot"), "Cancel asked; the task's snapshot"),
            **errors("404", *API_ERRORS),
        },
    }


@operation("GET", "/api/tasks/{task_id}/result")
def _result(ctx: Context) -> Schema:
    return {
        "summary": "Wait for a task to end",
        "operationId": "taskResult",
        "parameters": [
            _task_id_param(),
            {
                "name": "wait",
                "in": "query",
                "required": False,
                "schema": {"type": "number", "minimum": 0},
            },
        ],
        "responses": {
            "200": json_body(ref("Snapshot"), "The terminal snapshot"),
            **errors("400", "404", "408", *API_ERRORS),
        },
    }


@operation("POST", "/api/workflows")
def _workflow(ctx: Context) -> Schema:
    return {
        "summary": "Submit a chain, group or chord of tasks, or of more of them nested",
        "operationId": "submitWorkflow",
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": ref("WorkflowBody")}},
        },
        "responses": {
            "202": json_body(workflow_ack_schema(), "Accepted: every task step's id and the tree"),
            **errors(*BODY_ERRORS, *API_ERRORS),
        },
    }


def _workflow_id_param() -> Schema:
    return {"name": "workflow_id", "in": "path", "required": True, "schema": {"type": "string"}}


@operation("GET", "/api/workflows/{workflow_id}")
def _get_workflow(ctx: Context) -> Schema:
    return {
        "summary": "A workflow's state",
        "operationId": "getWorkflow",
        "parameters": [_workflow_id_param()],
        "responses": {
            "200": json_body(ref("WorkflowSnapshot"), "The workflow and each of its tasks"),
            **errors("404", *API_ERRORS),
        },
    }


@operation("DELETE", "/api/workflows/{workflow_id}")
def _cancel_workflow(ctx: Context) -> Schema:
    return {
        "summary": "Cancel every task of a workflow",
        "operationId": "cancelWorkflow",
        "parameters": [_workflow_id_param()],
        "responses": {
            "202": json_body(ref("WorkflowSnapshot"), "Cancel asked; the workflow"),
            **errors("404", *API_ERRORS),
        },
    }


@operation("GET", "/api/queues")
def _queues(ctx: Context) -> Schema:
    return {
        "summary": "Queue depths",
        "operationId": "listQueues",
        "responses": {
            "200": json_body({"type": "object"}, "Depth of each queue"),
            **errors(*API_ERRORS),
        },
    }


@operation("GET", "/api/workers")
def _workers(ctx: Context) -> Schema:
    return {
        "summary": "Workers, their active tasks and stats",
        "operationId": "listWorkers",
        "responses": {
            "200": json_body({"type": "object"}, "The workers"),
            **errors(*API_ERRORS),
        },
    }


@operation("GET", "/api/task-types")
def _task_types(ctx: Context) -> Schema:
    return {
        "summary": "The task types clients may submit, with their input's JSON Schema",
        "operationId": "listTaskTypes",
        "responses": {
            "200": json_body(
                listing("task_types", ref("TaskType")), "Every registered task type, by name"
            ),
            **errors("401", "403"),
        },
    }


@operation("GET", "/api/openapi.json")
def _openapi(ctx: Context) -> Schema:
    return {
        "summary": "This document",
        "operationId": "openapi",
        "security": [],
        "responses": {"200": json_body({"type": "object"}, "The OpenAPI 3.1 description")},
    }


def _probe(name: str, summary: str) -> OperationFn:
    def describe(ctx: Context) -> Schema:
        status = {
            "type": "object",
            "properties": {"status": {"type": "string"}},
            "required": ["status"],
        }
        responses: dict[str, Schema] = {"200": json_body(status, "OK")}
        if name == "readyz":
            responses["503"] = json_body(
                status, "Redis or the broker is unreachable, or a queue has no live worker"
            )
        return {"summary": summary, "operationId": name, "security": [], "responses": responses}

    return describe


operation("GET", "/healthz")(_probe("healthz", "Liveness"))
operation("GET", "/readyz")(
    _probe("readyz", "Readiness: Redis and the broker reachable, a live worker per queue")
)


@operation("GET", "/metrics")
def _metrics(ctx: Context) -> Schema:
    return {
        "summary": "Prometheus metrics",
        "operationId": "metrics",
        "security": [],
        "responses": {
            "200": {
                "description": "Prometheus text format",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    }


# ---- components -------------------------------------------------------------------------------


def submit_body_schema(ctx: Context) -> Schema:
    """One alternative per registered task: its name, its input schema and its queues."""
    variants = []
    for name, spec in sorted(ctx.tasks.items()):
        variants.append(
            {
                "type": "object",
                "title": name,
                "properties": {
                    "task": {"const": name},
                    # null (or no input) means every field takes its default
                    "input": {"anyOf": [spec.schema.json_schema(), {"type": "null"}]},
                    "queue": {"enum": list(spec.allowed_queues(ctx.settings.routes))},
                    "priority": {"type": "integer", "minimum": 0, "maximum": MAX_PRIORITY},
                    "idempotency_key": {
                        "type": ["string", "null"],
                        "minLength": 1,
                        "maxLength": 200,
                    },
                    "callback_url": {
                        "type": ["string", "null"],
                        "maxLength": MAX_URL_LENGTH,
                        "description": "http(s) URL called when the task ends; its host must "
                        "be on the gateway's webhook allowlist",
                    },
                    "countdown": {
                        "type": "number",
                        "minimum": 0,
                        "maximum": MAX_DELAY_S,
                        "description": "seconds before the task is due (not with eta)",
                    },
                    "eta": {
                        "type": "string",
                        "format": "date-time",
                        "description": "when the task is due, ISO-8601 (not with countdown)",
                    },
                    "expires": {
                        "oneOf": [
                            {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_DELAY_S},
                            {"type": "string", "format": "date-time"},
                        ],
                        "description": "seconds from now, or an ISO-8601 time, after which "
                        "a task not yet started ends CANCELLED (Expired)",
                    },
                },
                "required": ["task"],
                "additionalProperties": False,
            }
        )
    return {"oneOf": variants} if variants else {"type": "object"}


def snapshot_schema() -> Schema:
    """From ``shared.schema.Snapshot``, the one definition (the Lua scripts' field list too)."""
    return snapshot_json_schema()


def error_schema() -> Schema:
    return {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "details": {},
                },
                "required": ["code", "message"],
            }
        },
        "required": ["error"],
    }


def routes_of(app: web.Application) -> set[tuple[str, str]]:
    """(method, path) of every route the router has, as ``OPERATIONS`` keys spell them."""
    out = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("formatter") or info.get("path")
        if path:
            out.add((route.method.upper(), path))
    return out


def build_document(app: web.Application) -> Schema:
    ctx = Context(settings=app[SETTINGS], tasks=all_tasks())
    present = routes_of(app)
    paths: dict[str, dict[str, Schema]] = {}
    for (method, path), describe in OPERATIONS.items():
        if (method, path) in present:
            paths.setdefault(path, {})[method.lower()] = describe(ctx)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "taskgate",
            "version": "1",
            "description": "Run Celery tasks over HTTP and watch them live over Socket.IO.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
            "schemas": {
                "SubmitBody": submit_body_schema(ctx),
                "Snapshot": snapshot_schema(),
                "Error": error_schema(),
                "TaskType": task_type_schema(),
                **workflow_components(ctx.settings),
            },
        },
    }


OPENAPI_CACHE = web.AppKey("openapi_cache", dict)


async def openapi_json(request: web.Request) -> web.Response:
    from gateway.http.api import json_response

    cache: dict[str, Schema] = request.app[OPENAPI_CACHE]
    if "doc" not in cache:
        # Built on first use: by then every route of the app is in place.
        cache["doc"] = build_document(request.app)
    return json_response(cache["doc"])


def add_openapi_route(app: web.Application) -> None:
    app[OPENAPI_CACHE] = {}
    app.router.add_get("/api/openapi.json", openapi_json)
