"""The API's routes in one table: method, path and handler (``gateway.http.api`` for single
tasks and task types, ``gateway.http.manage`` for batches, results, queues, workers and
workflows). The OpenAPI document, probes, metrics and the page add their own routes."""

from __future__ import annotations

from aiohttp import web

from gateway.http import api, manage


def add_api_routes(app: web.Application) -> None:
    app.router.add_routes(
        [
            web.get("/api/task-types", api.list_task_types),
            web.post("/api/tasks", api.submit_task),
            web.get("/api/tasks", api.list_tasks),
            web.get("/api/tasks/{task_id}", api.get_task),
            web.delete("/api/tasks/{task_id}", api.cancel_task),
            web.post("/api/tasks/batch", manage.submit_batch),
            web.get("/api/tasks/{task_id}/result", manage.task_result),
            web.get("/api/queues", manage.queues),
            web.get("/api/workers", manage.workers),
            web.post("/api/workflows", manage.submit_workflow),
            web.get("/api/workflows/{workflow_id}", manage.get_workflow),
            web.delete("/api/workflows/{workflow_id}", manage.cancel_workflow),
        ]
    )
