"""The HTTP API's answers to mistakes: JSON errors with a code, never HTML."""

from __future__ import annotations

import uuid

from aiohttp.test_utils import TestClient

from tests.support import auth


def user() -> str:
    return f"u-{uuid.uuid4().hex[:8]}"


async def test_http_errors_are_json(http: TestClient) -> None:
    alice = user()
    resp = await http.get("/api/tasks")
    assert resp.status == 401 and (await resp.json())["error"]["code"] == "unauthorized"
    resp = await http.post(
        "/api/tasks", json={"task": "os.system", "input": {}}, headers=auth(alice)
    )
    assert resp.status == 422 and (await resp.json())["error"]["code"] == "unknown_task"
    resp = await http.post(
        "/api/tasks", json={"task": "demo.count", "input": {"steps": "x"}}, headers=auth(alice)
    )
    body = await resp.json()
    assert resp.status == 422 and body["error"]["details"]["field"] == "input.steps"
    resp = await http.post(
        "/api/tasks", data=b"{not json", headers={**auth(alice), "Content-Type": "application/json"}
    )
    assert resp.status == 400
    listed = await (await http.get("/api/tasks", headers=auth(alice))).json()
    assert listed == {"tasks": []}
