"""Celery's own result of a COMPLETED run, written in the run's terminal script.

A taskgate task keeps Celery's result (``celery-task-meta-<id>``) for ``AsyncResult`` users,
as a plain Celery task does. Stored by Celery, it costs the pool process two more round trips
per task after the terminal transition (the backend's ``GET`` of the current meta, then
``SETEX`` + ``PUBLISH``). When the result backend is the records' Redis (the default), the meta
is built here exactly as Celery's Redis backend would build and encode it, ``transition.lua``
writes it with the COMPLETED end (``SET`` with the backend's expiry, ``PUBLISH`` on the key: what
``RedisBackend._set`` does), and the request is marked ``ignore_result`` so that the tracer's
``mark_as_done`` does not store it a second time (a chord's part return would still run, but
chords are not folded).

Not folded, Celery stores the result itself as before: another backend class, another Redis,
``ignore_result`` on the task or the request, a request with a chain, callbacks or a chord
(Celery applies those after the function returns and lists them in the meta's ``children``),
a result Celery's serializer refuses, a COMPLETED that became CANCELLED.

Celery internals used, in this one place: ``Backend._get_result_meta`` (the meta
``store_result`` writes: status, result, traceback, children, date_done, group and parent ids,
the extended fields with ``result_extended``). Tested with celery 5.7.0 (constraints.txt;
pyproject allows >=5.7). ``check_internals`` runs at import: without it the fold is off, with
an error in the log, and Celery stores results itself.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from celery import Task, states
from celery.backends.redis import RedisBackend

from shared.records import CeleryMeta

log = logging.getLogger("taskgate.worker")

_META_PARAMS = ("result", "state", "traceback", "request")


def check_internals() -> bool:
    """Whether Celery's backend has what the fold needs (logged loudly when not)."""
    method = getattr(RedisBackend, "_get_result_meta", None)
    try:
        params = tuple(inspect.signature(method).parameters) if callable(method) else ()
    except (TypeError, ValueError):
        params = ()
    if params[1:5] != _META_PARAMS or not callable(getattr(RedisBackend, "get_key_for_task", None)):
        log.error(
            "celery.backends.redis.RedisBackend lacks _get_result_meta(result, state, traceback, "
            "request) (tested with celery 5.7.0): Celery stores each result itself (two more "
            "Redis round trips per task)"
        )
        return False
    return True


SUPPORTED = check_internals()


def meta_for(task: Task, result: Any, *, same_redis: bool) -> CeleryMeta | None:
    """Celery's result of ``task``'s run ending with ``result``, for ``transition.lua`` to
    write, or None where Celery must store it itself (see the module's docstring)."""
    if not (SUPPORTED and same_redis):
        return None
    backend = task.backend
    request = task.request
    if type(backend) is not RedisBackend or task.ignore_result or request.ignore_result:
        return None
    if request.chain or request.callbacks or request.chord:
        return None
    try:
        meta = backend._get_result_meta(
            result=result, state=states.SUCCESS, traceback=None, request=request
        )
        meta["task_id"] = request.id
        value = backend.encode(meta)
    except Exception as exc:  # Celery's own store then raises it, as for a plain task
        log.debug("task %s: result not folded (%s)", request.id, exc)
        return None
    return CeleryMeta(backend.get_key_for_task(request.id), value, int(backend.expires or 0))


def stored(task: Task) -> None:
    """The terminal script wrote the result: Celery's tracer must not store it again."""
    task.request.ignore_result = True
