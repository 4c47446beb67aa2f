"""Periodic tasks: ``celery -A worker beat`` sends the sweep on the configured schedule, and a
real worker runs it: index entries of expired records go, live ones stay."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import redis

from shared.settings import Settings
from tests.support import ROOT, CeleryWorker, wait_until


def test_beat_runs_the_sweep_on_schedule(
    env: dict[str, str], celery_worker: CeleryWorker, tmp_path: Path
) -> None:
    settings = Settings.from_env(env)
    keys = settings.keys
    client = redis.Redis.from_url(settings.require_redis())
    ghost = f"ghost-{uuid.uuid4().hex[:6]}"
    live_id = str(uuid.uuid4())
    client.zadd(keys.user_tasks(ghost), {"expired-task-id": time.time(), live_id: time.time()})
    client.zadd(keys.user_ended(ghost), {"expired-task-id": time.time()})
    client.hset(keys.task(live_id), mapping={"_owner": ghost, "status": '"COMPLETED"'})
    log = open(tmp_path / "beat.log", "wb")  # noqa: SIM115
    beat = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker",
            "beat",
            "--loglevel",
            "INFO",
            "-s",
            str(tmp_path / "schedule"),
            "--pidfile",
            str(tmp_path / "beat.pid"),
        ],
        env={**env, "TASKGATE_BEAT_SCHEDULE": "taskgate.sweep=1"},
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(
            lambda: (
                client.zscore(keys.user_tasks(ghost), "expired-task-id") is None
                and client.zscore(keys.user_ended(ghost), "expired-task-id") is None
            ),
            timeout=30,
        )
        assert client.zscore(keys.user_tasks(ghost), live_id) is not None
        assert b"taskgate.sweep" in (tmp_path / "beat.log").read_bytes()
    finally:
        beat.terminate()
        beat.wait(10)
        log.close()
        client.delete(keys.task(live_id), keys.user_tasks(ghost))
