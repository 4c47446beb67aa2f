"""P4b: submit (HTTP) to the first RUNNING update at the client, with idle real Celery workers.

(P4a, publish-to-client latency at 1,000 updates/s against the bare floor, runs inside P3,
which already has 1,000 clients connected.) One Socket.IO client of the submitting user is
connected; each submit is ``POST /api/tasks`` of ``demo.count`` (one step, no delay), one at a
time, and the time is taken from just before the request to the client's receipt of the task's
first ``RUNNING`` snapshot. The worker is an unmodified ``celery -A worker worker``.
"""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path

from bench.clients import ClientPool
from bench.harness import SECRET, Results, gateway_env, new_prefix, start_gateway, summary_ms
from gateway.auth import issue_token
from shared.settings import Secret
from tests.support import CeleryWorker

USER = "bench-p4"
BODY = json.dumps({"task": "demo.count", "input": {"steps": 1, "delay": 0}})


def run(results: Results, redis_url: str, work: Path, *, n: int = 40, warmup: int = 5) -> None:
    prefix = new_prefix("p4")
    gateway, port = start_gateway(work, redis_url, prefix)
    worker = CeleryWorker(gateway_env(redis_url, prefix, port), work, queues="fast", concurrency=2)
    pool: ClientPool | None = None
    try:
        worker.start(timeout=60)
        pool = ClientPool(f"http://127.0.0.1:{port}", "sio", [USER], 1)
        pool.connect()
        pool.watch_running()
        token = issue_token(Secret(SECRET), USER)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        samples: list[float] = []
        for i in range(warmup + n):
            t0 = time.time()
            conn.request("POST", "/api/tasks", BODY, headers)
            resp = conn.getresponse()
            task_id = json.loads(resp.read())["task_id"]
            deadline = time.monotonic() + 10
            while True:
                seen = pool.collect()["first_running"]
                if task_id in seen:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no RUNNING update for {task_id} in 10s")
                time.sleep(0.003)
            if i >= warmup:
                samples.append(seen[task_id] - t0)
            time.sleep(0.05)  # let the worker finish the task: it is idle at the next submit
        conn.close()
        s = summary_ms(samples)
        results.add(
            "P4",
            "taskgate + idle celery worker",
            "submit->RUNNING p50",
            s["p50_ms"],
            "ms",
            p99_ms=s["p99_ms"],
            max_ms=s["max_ms"],
            n=n,
        )
    finally:
        if pool is not None:
            pool.close()
        worker.stop()
        gateway.stop()
