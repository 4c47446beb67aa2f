"""Prometheus metrics after a real run, parsed with prometheus-client's own parser: two gateway
processes and one worker (its own metrics port, prefork pool) on a key prefix of their own.
Each task is counted once across the three (``taskgate_task_executions_total`` summed over
them), histogram counts match the tasks run, the delivery-lag histogram has samples, and labels
stay bounded (unknown task names create no series)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import CeleryWorker, GatewayProcess, SocketClient, auth, free_port, make_token
from tests.worker.test_celery_native import poll_terminal, produce


class Cluster:
    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = {**env, "TASKGATE_KEY_PREFIX": f"m-{uuid.uuid4().hex[:8]}:"}
        self.worker_port = free_port()
        files = log_dir / f"metrics-{self.worker_port}"
        files.mkdir()
        self.worker = CeleryWorker(
            {
                **self.env,
                "TASKGATE_WORKER_METRICS_PORT": str(self.worker_port),
                "PROMETHEUS_MULTIPROC_DIR": str(files),
            },
            log_dir,
        )
        self.gateways = [GatewayProcess(self.env, log_dir), GatewayProcess(self.env, log_dir)]

    def start(self) -> Cluster:
        self.worker.start()
        for gateway in self.gateways:
            gateway.start()
        return self

    def stop(self) -> None:
        for gateway in self.gateways:
            gateway.stop()
        self.worker.stop()

    @property
    def scrape_urls(self) -> list[str]:
        return [g.url + "/metrics" for g in self.gateways] + [
            f"http://127.0.0.1:{self.worker_port}/metrics"
        ]


@pytest.fixture(scope="module")
def cluster(env: dict[str, str], log_dir: Path) -> Iterator[Cluster]:
    running = Cluster(env, log_dir).start()
    try:
        yield running
    finally:
        running.stop()


def samples(text: str) -> list[Any]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def total(texts: list[str], name: str, **labels: str) -> float:
    return sum(
        s.value
        for text in texts
        for s in samples(text)
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


async def scrape(session: aiohttp.ClientSession, urls: list[str]) -> list[str]:
    out = []
    for url in urls:
        async with session.get(url) as resp:
            assert resp.status == 200, url
            out.append(await resp.text())
    return out


async def test_each_task_is_counted_once_across_two_gateways_and_a_worker(
    cluster: Cluster,
) -> None:
    user = f"metrics-{uuid.uuid4().hex[:6]}"
    a, b = (g.url for g in cluster.gateways)
    client = await SocketClient(a, make_token(user)).connect()
    bodies = [
        *({"task": "demo.count", "input": {"steps": 2, "delay": 0.01}} for _ in range(6)),
        *({"task": "demo.fail", "input": {"message": "boom"}} for _ in range(2)),
    ]
    async with aiohttp.ClientSession() as session:
        ids = []
        for i, body in enumerate(bodies):
            async with session.post(
                f"{(a, b)[i % 2]}/api/tasks", json=body, headers=auth(user)
            ) as r:
                assert r.status == 202
                ids.append((await r.json())["task_id"])
        # One cancelled before it started (held by its countdown): gateway B ends it.
        held = {"task": "demo.count", "input": {"steps": 1}, "countdown": 60}
        async with session.post(f"{a}/api/tasks", json=held, headers=auth(user)) as r:
            held_id = (await r.json())["task_id"]
        async with session.delete(f"{b}/api/tasks/{held_id}", headers=auth(user)) as r:
            assert r.status == 202
        finals = [await poll_terminal(session, f"{a}/", user, tid) for tid in [*ids, held_id]]
        assert Counter(f["status"] for f in finals) == {"COMPLETED": 6, "FAILED": 2, "CANCELLED": 1}
        await client.wait_terminal(ids[0])
        assert (await client.call("watch", {"tasks": {ids[0]: 0}}))["ok"] is True
        texts = await scrape(session, cluster.scrape_urls)

    def executions(task: str, status: str) -> float:
        return total(texts, "taskgate_task_executions_total", task=task, status=status)

    assert executions("demo.count", "COMPLETED") == 6
    assert executions("demo.fail", "FAILED") == 2
    assert executions("demo.count", "CANCELLED") == 1
    # ... and each by exactly one process: the cancel by gateway B, the runs by the worker.
    gateway_a, gateway_b, worker = texts
    assert total([gateway_b], "taskgate_task_executions_total", status="CANCELLED") == 1
    assert total([gateway_a], "taskgate_task_executions_total") == 0
    assert total([worker], "taskgate_task_executions_total") == 8
    # Histograms: one run duration per task that ran, one queue wait per first start.
    assert total(texts, "taskgate_task_duration_seconds_count", task="demo.count") == 6
    assert total(texts, "taskgate_task_duration_seconds_count", task="demo.fail") == 2
    assert total(texts, "taskgate_task_queue_wait_seconds_count") == 8
    assert total(texts, "taskgate_task_duration_seconds_bucket", task="demo.count", le="+Inf") == 6
    # Nothing running now.
    assert total([worker], "taskgate_active_tasks") == 0
    # The socket on gateway A got the updates of its user: the lag histogram has them.
    assert total([gateway_a], "taskgate_delivery_lag_seconds_count") >= len(client.events[ids[0]])
    # HTTP latency by route and status.
    assert total(texts, "taskgate_http_request_duration_seconds_count", route="/api/tasks",
                 method="POST", status="202") == 9  # fmt: skip
    assert total(texts, "taskgate_tasks_submitted_total", task="demo.count") == 7
    # Process metrics are there too.
    assert total([gateway_a], "process_resident_memory_bytes") > 0
    # Socket.IO on gateway A: the one connect, the one watch; gateway B saw none.
    assert total([gateway_a], "taskgate_socketio_connects_total", outcome="accepted") == 1
    assert total([gateway_a], "taskgate_socketio_events_total", event="watch") == 1
    assert total([gateway_b], "taskgate_socketio_events_total") == 0
    assert total([gateway_a], "taskgate_socketio_connections") == 1
    await client.close()


async def test_unknown_task_names_create_no_series(cluster: Cluster) -> None:
    user = f"labels-{uuid.uuid4().hex[:6]}"
    names = [f"made.up.{uuid.uuid4().hex[:6]}" for _ in range(3)]
    a = cluster.gateways[0].url
    async with aiohttp.ClientSession() as session:
        for name in names:  # refused at the gateway: 422, nothing counted by name
            async with session.post(
                f"{a}/api/tasks", json={"task": name}, headers=auth(user)
            ) as resp:
                assert resp.status == 422
        # Sent around the gateway with Celery's API: the worker records them FAILED UnknownTask.
        sent = [
            await asyncio.to_thread(produce, cluster.env, "send_task", name, user, {})
            for name in names
        ]
        finals = [await poll_terminal(session, f"{a}/", user, tid) for tid in sent]
        assert {f["error"]["type"] for f in finals} == {"UnknownTask"}
        texts = await scrape(session, cluster.scrape_urls)
        async with session.get(f"{a}/api/task-types", headers=auth(user)) as resp:
            registered = {t["name"] for t in (await resp.json())["task_types"]}
    every = "\n".join(texts)
    for name in names:
        assert name not in every
    assert total(texts, "taskgate_task_executions_total", task="unregistered", status="FAILED") >= 3
    assert total(texts, "taskgate_adopted_messages_total", task="unregistered") >= 3
    tasks = {
        s.labels["task"]
        for text in texts
        for s in samples(text)
        if "task" in s.labels and s.name.startswith("taskgate_")
    }
    assert tasks <= {"unregistered", *registered}
