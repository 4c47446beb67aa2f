"""Flower works unchanged: `celery -A worker flower` sees the workers and taskgate's tasks."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

from gateway.cli.embedded import free_port, wait_for_port
from tests.support import ROOT, CeleryWorker, wait_until


def _get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def test_flower_sees_workers_and_tasks(
    env: dict[str, str], celery_worker: CeleryWorker, tmp_path: Path
) -> None:
    port = free_port()
    log = open(tmp_path / "flower.log", "wb")  # noqa: SIM115
    flower = subprocess.Popen(
        [
            sys.executable, "-m", "celery", "-A", "worker", "flower",
            f"--port={port}", "--address=127.0.0.1", "--persistent=False",
            f"--db={tmp_path / 'flower.db'}",
        ],
        env={**env, "FLOWER_UNAUTHENTICATED_API": "true"},
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for_port(port, 30, flower)
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: celery_worker.name in str(_get(f"{base}/api/workers?refresh=1")), 30)
        # Run a task the taskgate way (through the registered Celery task); Flower's event
        # stream shows it by name.
        from celery import Celery

        from shared.settings import Settings
        from worker.celery_app import make_celery

        app: Celery = make_celery(Settings.from_env(env))
        task_id = str(uuid.uuid4())
        app.send_task("demo.add", kwargs={"value": 1}, task_id=task_id, queue="fast")
        wait_until(lambda: task_id in str(_get(f"{base}/api/tasks")), 30)
        tasks = _get(f"{base}/api/tasks")
        assert isinstance(tasks, dict) and tasks[task_id]["name"] == "demo.add"
    finally:
        flower.terminate()
        flower.wait(10)
        log.close()
