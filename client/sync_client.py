"""``Client``: the same methods as ``AsyncClient``, for code that is not async.

It runs an event loop of its own in a background thread and hands each call to it, so it
works anywhere: in a plain script, and in a thread whose own loop is already running (Jupyter,
a sync function called from async code), where ``asyncio.run`` would refuse. A call blocks the
calling thread until its answer, like any blocking client.
"""

from __future__ import annotations

import asyncio
import builtins
import threading
from collections.abc import Coroutine, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, TypeVar

from typing_extensions import Unpack

from client.async_client import AsyncClient, SubmitOptions
from client.errors import TaskgateError
from client.follow import POLL_S, QUIET_S, Snapshot
from client.retry import RetryPolicy

T = TypeVar("T")


class Client:
    """A blocking client of the gateway at ``url`` for the user ``token`` names; see
    ``AsyncClient`` for each method. ``follow`` is a plain iterator. Close it (``with
    Client(...) as client:`` or ``close()``) to stop its thread."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="taskgate-client", daemon=True
        )
        self._thread.start()
        self._async = AsyncClient(url, token, retry=retry, timeout=timeout)
        self._closed = False

    @property
    def url(self) -> str:
        return self._async.url

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise RuntimeError("the client is closed")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("Client called from its own loop: use AsyncClient there")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        """Close the HTTP session and stop the background loop."""
        if self._closed:
            return
        try:
            self._run(self._async.close())
        finally:
            self._closed = True
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            if not self._thread.is_alive():
                self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def submit(
        self, name: str, input: Mapping[str, Any] | None = None, **options: Unpack[SubmitOptions]
    ) -> Snapshot:
        """``AsyncClient.submit``."""
        return self._run(self._async.submit(name, input, **options))

    def submit_many(
        self,
        items: Iterable[Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
        traceparent: str | None = None,
    ) -> builtins.list[Snapshot | TaskgateError]:
        """``AsyncClient.submit_many``."""
        coro = self._async.submit_many(
            builtins.list(items), idempotency_key=idempotency_key, traceparent=traceparent
        )
        return self._run(coro)

    def get(self, task_id: str) -> Snapshot:
        """``AsyncClient.get``."""
        return self._run(self._async.get(task_id))

    def list(self, status: str | None = None, limit: int = 50) -> builtins.list[Snapshot]:
        """``AsyncClient.list``."""
        return self._run(self._async.list(status, limit))

    def result(self, task_id: str, wait: float | None = None) -> Snapshot:
        """``AsyncClient.result``."""
        return self._run(self._async.result(task_id, wait))

    def task_types(self) -> builtins.list[dict[str, Any]]:
        """``AsyncClient.task_types``."""
        return self._run(self._async.task_types())

    def cancel(self, task_id: str) -> Snapshot:
        """``AsyncClient.cancel``."""
        return self._run(self._async.cancel(task_id))

    def follow(
        self,
        task_id: str,
        *,
        since: int = 0,
        quiet: float = QUIET_S,
        poll: float = POLL_S,
    ) -> Iterator[Snapshot]:
        """``AsyncClient.follow`` as a plain iterator: ``for snap in client.follow(id)``.
        Leaving the loop early closes the socket."""
        stream = self._async.follow(task_id, since=since, quiet=quiet, poll=poll)

        async def step() -> tuple[bool, Snapshot | None]:
            try:
                return True, await anext(stream)
            except StopAsyncIteration:
                return False, None

        try:
            while True:
                more, snap = self._run(step())
                if not more or snap is None:
                    return
                yield snap
        finally:
            if not self._closed:
                self._run(stream.aclose())
