"""What the client tests share: holding the package's one-slot worker, and reading metrics."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import aiohttp

from client import AsyncClient


@contextlib.asynccontextmanager
async def worker_held(client: AsyncClient) -> AsyncIterator[str]:
    """The package's worker (one task at a time) busy with a ``demo.sleep`` until the block
    ends (then the sleep is cancelled): tasks submitted meanwhile stay PENDING."""
    sleeper = await client.submit("demo.sleep", {"seconds": 120})
    task_id = sleeper["task_id"]
    try:
        async with contextlib.aclosing(client.follow(task_id)) as stream:
            async for snap in stream:
                if snap["status"] == "RUNNING":
                    break
        yield task_id
    finally:
        await client.cancel(task_id)


async def answers(url: str, method: str, route: str, status: int) -> float:
    """How many ``status`` answers the gateway at ``url`` gave to ``method route``
    (``taskgate_http_request_duration_seconds_count`` on ``/metrics``)."""
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as resp:
        text = await resp.text()
    return metric(
        text,
        "taskgate_http_request_duration_seconds_count",
        method=method,
        route=route,
        status=str(status),
    )


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of ``name`` with ``labels`` in a Prometheus text page (0 when
    absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return 0.0
