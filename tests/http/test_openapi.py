"""``GET /api/openapi.json`` describes the API truthfully; schemathesis checks it against a real
gateway (no 5xx, every status, content type, header and body as documented)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient, TestServer

from gateway.http.openapi import OPERATIONS, routes_of
from shared.registry import all_tasks
from shared.settings import Settings
from tests.support import footprint, isolated_env, make_token, serve_gateway

ServerFactory = Callable[..., Awaitable[TestServer]]
# Cases per operation and phase; the whole run stays well under a minute.
MAX_EXAMPLES = 40
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
    ]
)


async def test_document_is_openapi_31_built_from_the_registry(http: TestClient) -> None:
    resp = await http.get("/api/openapi.json")  # no token needed for the description
    assert resp.status == 200
    doc = await resp.json()
    assert doc["openapi"] == "3.1.0"
    variants = doc["components"]["schemas"]["SubmitBody"]["oneOf"]
    by_name = {v["properties"]["task"]["const"]: v for v in variants}
    assert set(by_name) == set(all_tasks())
    steps = by_name["demo.count"]["properties"]["input"]["anyOf"][0]["properties"]["steps"]
    assert steps == {"type": "integer", "minimum": 1, "maximum": 10000, "default": 10}
    assert by_name["demo.count"]["additionalProperties"] is False


async def test_document_lists_exactly_the_routes_that_exist(http: TestClient) -> None:
    doc = await (await http.get("/api/openapi.json")).json()
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    present = routes_of(http.server.app)
    assert documented <= present
    # Every API route of the router is described (HEAD and the web client's pages aside).
    api = {(m, p) for m, p in present if p.startswith("/api/") and m != "HEAD"}
    undocumented = api - set(OPERATIONS)
    assert not undocumented, f"add these to gateway/openapi.py: {sorted(undocumented)}"


async def test_schemathesis_finds_no_failure(
    env: dict[str, str], aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    # A gateway of its own (no worker drains its queues; no rate or quota in the way), so the
    # generated submits neither load the session's worker nor trip 429s.
    settings = Settings.from_env(
        isolated_env(env, TASKGATE_SUBMIT_RATE="0", TASKGATE_MAX_ACTIVE="0")
    )
    server = await serve_gateway(aiohttp_server, settings)
    url = str(server.make_url("/"))
    report = tmp_path / "schemathesis.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "schemathesis.cli", "run", url + "api/openapi.json",
        "--checks", CHECKS, "--max-examples", str(MAX_EXAMPLES), "--seed", "4",
        "--phases", "examples,coverage,fuzzing", "--generation-database", "none",
        "--header", f"Authorization: Bearer {make_token('schemathesis')}",
        "--request-timeout", "10", "--no-color",
        # This gateway has no worker on purpose, so /readyz is rightly 503 (any 5xx fails
        # not_a_server_error); its answers are tested in tests/http/test_readyz.py.
        "--exclude-path", "/readyz",
        "--report", "json", "--report-json-path", str(report),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    async with asyncio.timeout(240):
        out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    summary = _summary(text)
    print(f"schemathesis: {summary}")
    (tmp_path / "schemathesis.txt").write_text(text)
    assert proc.returncode == 0, text[-6000:]
    assert "No issues found" in text or "0 failures" in text or proc.returncode == 0
    async with aiohttp.ClientSession() as session, session.get(url + "healthz") as resp:
        assert resp.status == 200
    assert settings.redis_url is not None
    assert await _records_match_broker(settings)


def _summary(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    keep = [ln for ln in lines if any(w in ln for w in ("passed", "failed", "cases", "Test cases"))]
    return " | ".join(keep[-4:])


async def _records_match_broker(settings: Settings) -> bool:
    """Every accepted submit left one record and one broker message; no rejected one left any."""
    import redis.asyncio as aioredis

    assert settings.redis_url is not None
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        counts: dict[str, Any] = await footprint(client, settings.key_prefix)
    finally:
        await client.aclose()
    print(f"schemathesis left {json.dumps(counts)}")
    return bool(counts["records"] == counts["broker_messages"])
