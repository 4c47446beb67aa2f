"""HTTP routes beyond single tasks: batches, results with wait, queues, workers."""

from __future__ import annotations

from aiohttp import web

from gateway.appkeys import SERVICE
from gateway.http.api import USER, json_response, query_number, read_json
from gateway.tasks.submission import field_error
from shared.errors import BadRequest, TaskgateError

MAX_WAIT_S = 60.0
BATCH_FIELDS = frozenset({"tasks", "idempotency_key"})


async def submit_batch(request: web.Request) -> web.Response:
    body = await read_json(request)
    if not isinstance(body, dict) or "tasks" not in body or set(body) - BATCH_FIELDS:
        raise BadRequest('body must be {"tasks": [...], "idempotency_key"?: str}')
    key = body.get("idempotency_key")
    if "idempotency_key" in body and not isinstance(key, str):
        raise field_error("idempotency_key", "must be a string")
    answers = await request.app[SERVICE].submit_many(request[USER], body["tasks"], key)
    items = [
        a.to_dict() if isinstance(a, TaskgateError) else {"task_id": a["task_id"], "seq": a["seq"]}
        for a in answers
    ]
    return json_response({"tasks": items}, status=202)


async def task_result(request: web.Request) -> web.Response:
    wait = query_number(request, "wait", "0", float, "a number of seconds")
    if not 0 <= wait <= MAX_WAIT_S:
        raise BadRequest(f"wait must be from 0 to {MAX_WAIT_S:g} seconds")
    service = request.app[SERVICE]
    snap = await service.wait_result(request[USER], request.match_info["task_id"], wait)
    return json_response(snap)


async def queues(request: web.Request) -> web.Response:
    return json_response(await request.app[SERVICE].queue_info())


async def workers(request: web.Request) -> web.Response:
    return json_response(await request.app[SERVICE].worker_stats())


async def submit_workflow(request: web.Request) -> web.Response:
    ack = await request.app[SERVICE].workflows.submit(request[USER], await read_json(request))
    return json_response(ack, status=202)


async def get_workflow(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    snap = await service.workflows.snapshot(request[USER], request.match_info["workflow_id"])
    return json_response(snap)


async def cancel_workflow(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    snap = await service.workflows.cancel(request[USER], request.match_info["workflow_id"])
    return json_response(snap, status=202)
