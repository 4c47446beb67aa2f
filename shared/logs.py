"""Log lines a machine can read (``TASKGATE_LOG_FORMAT=json``), and what they are about.

``json``: one JSON object per line with ``time`` (ISO-8601, UTC), ``level``, ``logger``,
``message`` and, where known, ``task_id``, ``trace_id`` and ``user`` (and ``exc`` with a
traceback). ``text`` (the default) stays the readable line of ``shared.logging``.

What a line is about comes from, in order: the record's own ``extra`` (``task_id=``,
``trace_id=``, ``user=``), the fields bound to the running code (``bound``: the gateway binds a
request's trace and user, the worker's runner the task being run), and, for Celery's own task
lines ("Task demo.count[...] received/succeeded"), the ``id`` in their arguments.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson

from shared.logging import setup_logging

FORMATS = ("text", "json")
ABOUT = ("task_id", "trace_id", "user")
_EMPTY: Mapping[str, str] = {}
_BOUND: ContextVar[Mapping[str, str]] = ContextVar("taskgate_log_fields", default=_EMPTY)


def bound_fields() -> Mapping[str, str]:
    """The fields bound to the running code (``bound``)."""
    return _BOUND.get()


@contextmanager
def bound(**fields: str | None) -> Iterator[None]:
    """Log lines inside the block are about these (``None`` values are left out); they add to
    what is bound already."""
    token = _BOUND.set({**_BOUND.get(), **{k: v for k, v in fields.items() if v}})
    try:
        yield
    finally:
        _BOUND.reset(token)


def replace_bound(**fields: str | None) -> None:
    """Bind exactly these from now on (Celery's task signals: a run's start and end, which
    are two calls, not a block)."""
    _BOUND.set({k: v for k, v in fields.items() if v})


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module's docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        bound_now = _BOUND.get()
        for name in ABOUT:
            value = getattr(record, name, None) or bound_now.get(name)
            if value:
                out[name] = value
        if "task_id" not in out and isinstance(record.args, Mapping):
            # Celery's task lines pass {"id": ..., "name": ...} as their arguments.
            task_id = record.args.get("id")
            if isinstance(task_id, str):
                out["task_id"] = task_id
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        return orjson.dumps(out, default=str).decode()


def use_json(logger: logging.Logger) -> None:
    """Every handler of ``logger`` writes JSON lines (Celery's ``after_setup_logger``)."""
    for handler in logger.handlers:
        handler.setFormatter(JsonFormatter())


def setup(level: str = "INFO", fmt: str = "text") -> None:
    """Configure the root logger (``shared.logging.setup_logging``) in ``fmt``: ``text`` or
    ``json``."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}")
    setup_logging(level)
    if fmt == "json":
        root = logging.getLogger()
        for handler in root.handlers:
            if getattr(handler, "_taskgate", False):
                handler.setFormatter(JsonFormatter())
