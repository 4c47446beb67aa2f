"""The baseline of P8 and P9: a plain Celery app with one no-op task, no taskgate runner.

``celery -A bench.plain_celery worker -Q fast``. Its configuration is ``shared.celery_config``'s
for ``Settings.from_env()`` (the same late acks, prefetch, serializers, events, broker
options and Redis result backend as taskgate's workers, on the key prefix of its own
environment); only the task differs: ``@app.task`` with nothing in it, whose result Celery
stores as it always does (``celery-task-meta-<id>`` in the result backend).
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from shared.celery_config import celery_config
from shared.settings import Settings

NAME = "plain.noop"


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings.from_env()
    celery = Celery("plain", set_as_current=False)
    celery.conf.update(celery_config(settings))
    celery.conf.task_routes = [{NAME: {"queue": "fast"}}]

    @celery.task(name=NAME)  # type: ignore[untyped-decorator]
    def noop() -> None:
        return None

    return celery


def __getattr__(name: str) -> Any:
    # ``celery -A bench.plain_celery`` reads ``app``: built from the environment on first access.
    if name in ("app", "celery"):
        global _app
        if _app is None:
            _app = make_app()
        return _app
    raise AttributeError(f"module 'bench.plain_celery' has no attribute {name!r}")


_app: Celery | None = None
