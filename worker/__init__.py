"""taskgate workers: stock Celery, started with ``celery -A worker worker -Q fast,heavy``.

``worker.app`` is the Celery app, built from the environment on first access so that importing
task modules (``worker.demo``) does not require a configured environment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery

    app: Celery


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from worker.celery_app import default_app

        return default_app()
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
