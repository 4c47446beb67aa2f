"""``AsyncClient``: the gateway's HTTP API and live updates, for asyncio code."""

from __future__ import annotations

import builtins
import time
from collections.abc import AsyncGenerator, Iterable, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, TypedDict
from urllib.parse import quote

from typing_extensions import Unpack

from client.errors import TaskgateError, Timeout, error_from
from client.follow import POLL_S, QUIET_S, TERMINAL, Follower, Snapshot
from client.retry import RetryPolicy
from client.transport import Transport

# The longest wait the gateway takes in one ``GET /api/tasks/{id}/result?wait=``.
MAX_WAIT_S = 60.0


class SubmitOptions(TypedDict, total=False):
    """A submit's options (the contract's submit body); one left out, or ``None``, is not
    sent. ``eta`` and ``expires`` may be datetimes (sent as ISO-8601); ``traceparent`` goes as
    the W3C header on ``submit``, in the body otherwise."""

    queue: str | None
    priority: int | None
    countdown: float | None
    eta: datetime | str | None
    expires: float | datetime | str | None
    idempotency_key: str | None
    callback_url: str | None
    traceparent: str | None


def submit_body(
    name: str, input: Mapping[str, Any] | None = None, **options: Unpack[SubmitOptions]
) -> dict[str, Any]:
    """The contract's submit body for task ``name``; options left ``None`` are not sent."""
    body: dict[str, Any] = {"task": name, "input": dict(input or {})}
    for key, value in options.items():
        if isinstance(value, datetime):
            value = value.isoformat()
        if value is not None:
            body[key] = value
    return body


def _task_path(task_id: str) -> str:
    return "/api/tasks/" + quote(task_id, safe="")


class AsyncClient:
    """A client of the taskgate gateway at ``url`` (``http://host:port``), acting as the user
    that ``token`` names.

    Every method raises the contract's errors as ``client.errors`` exceptions. With
    ``retry=RetryPolicy()``, answers that say nothing was done (429, 503, no connection) are
    retried with capped exponential backoff, honouring ``Retry-After``; without it they are
    raised at once. Use it as ``async with AsyncClient(url, token) as client:`` or call
    ``close()``.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.retry = retry
        self._http = Transport(self.url, token, retry, timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session (following sockets close with their iterators)."""
        await self._http.close()

    # -- Submitting ---------------------------------------------------------------------------

    async def submit(
        self, name: str, input: Mapping[str, Any] | None = None, **options: Unpack[SubmitOptions]
    ) -> Snapshot:
        """Submit task ``name`` with ``input`` (``POST /api/tasks``; ``SubmitOptions``); its
        first snapshot (``task_id``, ``status`` ``PENDING``, ``seq`` 1). ``traceparent`` goes as
        the W3C header. Raises ``InvalidInput`` (``field`` names the path), ``RateLimited``, ..."""
        traceparent = options.pop("traceparent", None)
        body = submit_body(name, input, **options)
        headers = {"traceparent": traceparent} if traceparent else None
        snap: Snapshot = await self._http.request("POST", "/api/tasks", body=body, headers=headers)
        return snap

    async def submit_many(
        self,
        items: Iterable[Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
        traceparent: str | None = None,
    ) -> builtins.list[Snapshot | TaskgateError]:
        """Submit several tasks in one request (``POST /api/tasks/batch``). Each item is a
        submit body (``{"task": name, "input": {...}, "queue"?: ...}``; ``submit_body`` builds
        one). The answer has one entry per item, in order: ``{"task_id", "seq"}``, or the
        item's own error as an exception (returned, not raised: the others were accepted)."""
        body: dict[str, Any] = {"tasks": [dict(item) for item in items]}
        if idempotency_key is not None:
            body["idempotency_key"] = idempotency_key
        headers = {"traceparent": traceparent} if traceparent else None
        answer = await self._http.request("POST", "/api/tasks/batch", body=body, headers=headers)
        out: builtins.list[Snapshot | TaskgateError] = []
        for entry in answer["tasks"]:
            out.append(error_from(entry) if "error" in entry else entry)
        return out

    # -- Reading ------------------------------------------------------------------------------

    async def get(self, task_id: str) -> Snapshot:
        """The task's current snapshot (``GET /api/tasks/{id}``); ``NotFound`` for an unknown
        id or another user's task."""
        snap: Snapshot = await self._http.request("GET", _task_path(task_id))
        return snap

    async def list(self, status: str | None = None, limit: int = 50) -> builtins.list[Snapshot]:
        """The user's tasks, newest first (``GET /api/tasks``), of ``status`` if given."""
        params = {"limit": str(limit)}
        if status:
            params["status"] = status
        answer = await self._http.request("GET", "/api/tasks", params=params)
        tasks: builtins.list[Snapshot] = answer["tasks"]
        return tasks

    async def result(self, task_id: str, wait: float | None = None) -> Snapshot:
        """The task's terminal snapshot (``GET /api/tasks/{id}/result?wait=``).

        ``wait=None`` waits until the task ends, however long; ``wait=S`` waits at most ``S``
        seconds and then raises ``Timeout`` (the task keeps running); ``wait=0`` answers at
        once. Long waits are made of successive requests of at most ``MAX_WAIT_S``.
        """
        deadline = None if wait is None else time.monotonic() + max(0.0, wait)
        while True:
            left = MAX_WAIT_S if deadline is None else deadline - time.monotonic()
            chunk = max(0.0, min(MAX_WAIT_S, left))
            try:
                snap: Snapshot = await self._http.request(
                    "GET",
                    _task_path(task_id) + "/result",
                    params={"wait": f"{chunk:.3f}"},
                    extra_time=chunk,
                )
                return snap
            except Timeout as exc:
                if exc.code != "timeout" or (deadline is not None and time.monotonic() >= deadline):
                    raise

    async def task_types(self) -> builtins.list[dict[str, Any]]:
        """Every task type the user may submit (``GET /api/task-types``): name, queue(s),
        description and the input's JSON Schema."""
        answer = await self._http.request("GET", "/api/task-types")
        types: builtins.list[dict[str, Any]] = answer["task_types"]
        return types

    # -- Changing -----------------------------------------------------------------------------

    async def cancel(self, task_id: str) -> Snapshot:
        """Ask the task to stop (``DELETE /api/tasks/{id}``): a queued task ends ``CANCELLED``
        at once, a running one at its next step; one that already ended stays as it was. The
        answer is the snapshot right after the request."""
        snap: Snapshot = await self._http.request("DELETE", _task_path(task_id))
        return snap

    # -- Live ---------------------------------------------------------------------------------

    async def follow(
        self,
        task_id: str,
        *,
        since: int = 0,
        quiet: float = QUIET_S,
        poll: float = POLL_S,
    ) -> AsyncGenerator[Snapshot, None]:
        """Every snapshot of the task with a ``seq`` above ``since``, in ``seq`` order, ending
        after the terminal one: ``async for snap in client.follow(task_id)``.

        Updates come over Socket.IO (the user's room; ``watch`` with the last ``seq`` on each
        (re)connect catches up); while the socket cannot connect, or after ``quiet`` seconds
        without an update, the HTTP record is read (every ``poll`` seconds while disconnected).
        None is yielded twice or out of order. The first snapshot is the current one: what
        changed before following started is not replayed (``submit_and_follow`` sees all).
        Raises ``NotFound`` for an unknown id, ``Unauthorized`` for a refused token.
        """
        follower = self._follower(since=since, quiet=quiet, poll=poll)
        stream = follower.snapshots(task_id)
        try:
            async for snap in stream:
                yield snap
        finally:
            await stream.aclose()

    async def submit_and_follow(
        self,
        name: str,
        input: Mapping[str, Any] | None = None,
        *,
        quiet: float = QUIET_S,
        poll: float = POLL_S,
        **options: Any,
    ) -> AsyncGenerator[Snapshot, None]:
        """Submit task ``name`` (options as for ``submit``) and yield every one of its
        snapshots, from ``seq`` 1 (``PENDING``) to the terminal one.

        The submit goes over the follower's Socket.IO connection, which the contract
        subscribes before the task is published, so no update is missed; when the socket
        cannot connect it goes over HTTP and following falls back as ``follow`` does.
        """
        body = submit_body(name, input, **options)
        follower = self._follower(quiet=quiet, poll=poll)

        async def http_submit(sent: Mapping[str, Any]) -> Snapshot:
            fields = dict(sent)
            name = fields.pop("task")
            return await self.submit(name, fields.pop("input", None), **fields)

        stream = follower.submit(body, http_submit)
        try:
            async for snap in stream:
                yield snap
        finally:
            await stream.aclose()

    def _follower(self, **kwargs: Any) -> Follower:
        return Follower(self.url, self.token, self._record, retry=self.retry, **kwargs)

    async def _record(self, task_id: str) -> Snapshot:
        """The record without retries: following has its own fallback loop."""
        snap: Snapshot = await self._http.request("GET", _task_path(task_id), retry=False)
        return snap


def is_terminal(snap: Mapping[str, Any]) -> bool:
    """Whether ``snap``'s status is one a task never leaves."""
    return snap.get("status") in TERMINAL
