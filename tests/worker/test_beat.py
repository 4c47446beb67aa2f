"""Periodic tasks: ``celery -A worker beat`` sends the sweep on the configured schedule, and a
real worker runs it: index entries of expired records go, live ones stay."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import redis

from shared.settings import Settings
from tests.support import ROOT, CeleryWorker, wait_until


def _beat(env: dict[str, str], tmp_path: Path, schedule: str) -> subprocess.Popen[bytes]:
    """``celery -A worker beat`` with ``TASKGATE_BEAT_SCHEDULE=schedule``, its log in
    ``tmp_path/beat.log``."""
    log = open(tmp_path / "beat.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
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
        env={**env, "TASKGATE_BEAT_SCHEDULE": schedule},
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    return proc


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
    beat = _beat(env, tmp_path, "taskgate.sweep=1")
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
        client.delete(keys.task(live_id), keys.user_tasks(ghost))


def test_beat_runs_a_user_task_with_its_input_as_recorded_tasks_of_the_service_user(
    env: dict[str, str], celery_worker: CeleryWorker, tmp_path: Path
) -> None:
    settings = Settings.from_env(env)
    client = redis.Redis.from_url(settings.require_redis())
    service = settings.keys.user_tasks(settings.service_user)
    before = set(client.zrange(service, 0, -1))
    beat = _beat(env, tmp_path, 'demo.count=1:{"steps": 2, "delay": 0}')

    def completed_runs() -> list[dict[str, bytes]]:
        runs = []
        for tid in set(client.zrange(service, 0, -1)) - before:
            record = client.hgetall(settings.keys.task(tid.decode()))
            if record.get(b"task") == b'"demo.count"' and record.get(b"status") == b'"COMPLETED"':
                runs.append(record)
        return runs

    try:
        wait_until(lambda: len(completed_runs()) >= 2, timeout=30)
        for record in completed_runs():
            assert json.loads(record[b"result"]) == {"counted": 2}
    finally:
        beat.terminate()
        beat.wait(10)


def test_beat_refuses_to_start_with_an_entry_for_an_unknown_task(
    env: dict[str, str], tmp_path: Path
) -> None:
    beat = _beat(env, tmp_path, "reports.nightly=crontab(0 3 * * *)")
    try:
        assert beat.wait(60) != 0
    finally:
        if beat.poll() is None:
            beat.kill()
            beat.wait(5)
    out = (tmp_path / "beat.log").read_text()
    assert "TASKGATE_BEAT_SCHEDULE: no task named 'reports.nightly' is registered" in out
