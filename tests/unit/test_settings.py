"""Settings and configuration read from the environment: each bad value fails at start, naming
its variable; secrets stay out of reprs. No Redis, no process."""

from __future__ import annotations

import pytest

from gateway.inprocess_config import ManagerConfig
from shared.errors import ConfigError
from shared.settings import Settings
from tests.support import FAULT_ENV, SECRET, offline_env


def test_bad_schedule_fails_at_start_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="TASKGATE_BEAT_SCHEDULE"):
        Settings.from_env({"TASKGATE_BEAT_SCHEDULE": "taskgate.sweep=soon"})
    assert Settings.from_env({"TASKGATE_BEAT_SCHEDULE": "off"}).beat_schedule == ()


def test_visibility_timeout_must_exceed_the_hard_time_limit() -> None:
    env = {**FAULT_ENV, "CELERY_TASK_TIME_LIMIT": "10", "TASKGATE_VISIBILITY_TIMEOUT_S": "10"}
    with pytest.raises(ConfigError, match="TASKGATE_VISIBILITY_TIMEOUT_S"):
        Settings.from_env(env)
    limits = {"CELERY_TASK_SOFT_TIME_LIMIT": "5", "CELERY_TASK_TIME_LIMIT": "10"}
    assert Settings.from_env(limits).visibility_timeout == 70


def test_secret_is_not_in_repr_of_settings() -> None:
    settings = Settings.from_env(offline_env())
    assert SECRET not in repr(settings) and SECRET not in str(settings)
    assert settings.secret is not None and SECRET not in f"{settings.secret}"


def test_webhook_settings_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "TASKGATE_WEBHOOK_ALLOWED_HOSTS": "hooks.example.com, *.example.org",
            "TASKGATE_WEBHOOK_ALLOW_PRIVATE": "yes",
            "TASKGATE_WEBHOOK_MAX_ATTEMPTS": "3",
            "TASKGATE_WEBHOOK_SECRET": "s" * 40,
        }
    )
    assert settings.webhook_allowed_hosts == ("hooks.example.com", "*.example.org")
    assert settings.webhook_allow_private and settings.webhook_max_attempts == 3
    assert "s" * 40 not in repr(settings)
    defaults = Settings.from_env({})
    assert defaults.webhook_allowed_hosts == () and not defaults.webhook_allow_private
    for name, value in [
        ("TASKGATE_WEBHOOK_MAX_ATTEMPTS", "0"),
        ("TASKGATE_WEBHOOK_ALLOW_PRIVATE", "maybe"),
        ("TASKGATE_WEBHOOK_BACKOFF_S", "-1"),
        ("TASKGATE_WEBHOOK_TIMEOUT_S", "abc"),
    ]:
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({name: value})


def test_manager_config_from_dict_and_env() -> None:
    cfg = ManagerConfig.from_mapping({"task_timeout_seconds": 5, "batch_size": 10})
    assert cfg.task_timeout_seconds == 5.0 and cfg.batch_size == 10
    env = {"CELERY_TASK_TIMEOUT": "7", "CELERY_BATCH_SIZE": "3", "CELERY_RATE_LIMIT": "2.5"}
    cfg = ManagerConfig.from_env(env)
    assert (cfg.task_timeout_seconds, cfg.batch_size, cfg.rate_limit_requests_per_second) == (
        7.0, 3, 2.5,
    )  # fmt: skip
    with pytest.raises(ConfigError, match="CELERY_BATCH_SIZE"):
        ManagerConfig.from_env({"CELERY_BATCH_SIZE": "many"})
    with pytest.raises(ConfigError, match="unknown key"):
        ManagerConfig.from_mapping({"batchsize": 3})


def test_beat_entries_take_intervals_crontabs_and_input() -> None:
    value = (
        'demo.count=2:{"steps": 3, "delay": 0}, taskgate.sweep=300, '
        'demo.sleep=crontab(*/5 1,2 * * mon-fri):{"seconds": 1}'
    )
    entries = Settings.from_env({"TASKGATE_BEAT_SCHEDULE": value}).beat_schedule
    assert [(e.task, e.every_s, e.crontab, e.input) for e in entries] == [
        ("demo.count", 2.0, None, {"steps": 3, "delay": 0}),
        ("taskgate.sweep", 300.0, None, {}),
        ("demo.sleep", None, ("*/5", "1,2", "*", "*", "mon-fri"), {"seconds": 1}),
    ]
    for bad in ("demo.count=crontab(1 2 3)", "demo.count=2:[1]", "demo.count=2:{nope", "=2"):
        with pytest.raises(ConfigError, match="TASKGATE_BEAT_SCHEDULE"):
            Settings.from_env({"TASKGATE_BEAT_SCHEDULE": bad})


def test_a_beat_entry_for_an_unknown_task_refuses_to_start() -> None:
    from worker.celery_app import make_celery

    settings = Settings.from_env(offline_env(TASKGATE_BEAT_SCHEDULE="reports.nightly=60"))
    with pytest.raises(ConfigError, match=r"'reports\.nightly'"):
        make_celery(settings)
    crontab_app = make_celery(
        Settings.from_env(offline_env(TASKGATE_BEAT_SCHEDULE="demo.count=crontab(0 3 * * *)"))
    )
    (entry,) = crontab_app.conf.beat_schedule.values()
    assert entry["task"] == "demo.count" and entry["schedule"].hour == {3}


def test_worker_recycling_and_per_queue_concurrency_settings() -> None:
    from gateway.cli.embedded import queue_concurrency
    from shared.celery_config import celery_config

    env = offline_env(
        CELERY_WORKER_MAX_TASKS_PER_CHILD="200", CELERY_WORKER_MAX_MEMORY_PER_CHILD="512000"
    )
    conf = celery_config(Settings.from_env(env))
    assert conf["worker_max_tasks_per_child"] == 200
    assert conf["worker_max_memory_per_child"] == 512000
    assert conf["task_send_sent_event"] is True
    assert celery_config(Settings.from_env(offline_env()))["worker_max_tasks_per_child"] is None
    assert queue_concurrency({"CELERY_HEAVY_WORKER_CONCURRENCY": "1"}, "heavy") == 1
    assert queue_concurrency({}, "fast") is None
    with pytest.raises(ConfigError, match="CELERY_FAST_WORKER_CONCURRENCY"):
        queue_concurrency({"CELERY_FAST_WORKER_CONCURRENCY": "many"}, "fast")
    with pytest.raises(ConfigError, match="CELERY_WORKER_MAX_TASKS_PER_CHILD"):
        Settings.from_env(offline_env(CELERY_WORKER_MAX_TASKS_PER_CHILD="0"))


def test_sent_events_are_on_unless_turned_off() -> None:
    from gateway.broker.sent_events import sends_sent_events
    from shared.celery_config import celery_config

    assert Settings.from_env({}).task_send_sent_event
    for value, on in [("0", False), ("no", False), ("False", False), ("1", True), ("YES", True)]:
        settings = Settings.from_env(offline_env(CELERY_TASK_SEND_SENT_EVENT=value))
        assert celery_config(settings)["task_send_sent_event"] is on, value
        assert sends_sent_events(settings) is on, value
    with pytest.raises(ConfigError, match="CELERY_TASK_SEND_SENT_EVENT: 'sometimes' must be"):
        Settings.from_env({"CELERY_TASK_SEND_SENT_EVENT": "sometimes"})
