"""Fixtures of the client tests: a real gateway process (``taskgate gateway``, the way a remote
service meets it) and a real Celery worker of this package's own, on the session's Redis.

The worker also loads the fault tests' tasks (``faults.quick_limit`` has a 1 s time limit of
its own, for TIMED_OUT) and runs one task at a time, so a test can hold a task back behind a
``demo.sleep`` until it is following it. Its key prefix is its own, so nothing else's tasks
reach it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import CeleryWorker, GatewayProcess, RedisServer, base_env, make_token, started

TASK_MODULES = "worker.demo,tests.faults.tasks_faults"


@pytest.fixture(scope="package")
def client_env(redis_server: RedisServer) -> dict[str, str]:
    return base_env(
        redis_server.url,
        f"tgc-{uuid.uuid4().hex[:8]}:",
        TASKGATE_TASK_MODULES=TASK_MODULES,
        TASKGATE_SUBMIT_RATE="0",
    )


@pytest.fixture(scope="package")
def client_worker(client_env: dict[str, str], log_dir: Path) -> Iterator[CeleryWorker]:
    with started(CeleryWorker(client_env, log_dir, concurrency=1)) as worker:
        yield worker


@pytest.fixture(scope="package")
def remote(
    client_env: dict[str, str], client_worker: CeleryWorker, log_dir: Path
) -> Iterator[GatewayProcess]:
    """``taskgate gateway`` on a free port, with the package's worker behind it."""
    with started(GatewayProcess(client_env, log_dir)) as gateway:
        yield gateway


@pytest.fixture
def who() -> str:
    """A user of this test's own."""
    return f"cl-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def token(who: str) -> str:
    return make_token(who)
