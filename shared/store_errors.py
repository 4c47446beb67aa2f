"""Store failures become client errors in one place: ``with store_errors(): ...``.

Every path that talks to the records' Redis on behalf of a client (HTTP routes, Socket.IO acks,
the in-process API) runs its Redis calls inside this context manager, as httpx maps httpcore's
exceptions in ``map_httpcore_exceptions``: a Redis that is down, restarting or too slow to answer
becomes ``StoreUnavailable`` (503 ``store_unavailable`` with ``Retry-After``; nothing accepted),
never an unhandled 500.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from redis.exceptions import RedisError

from shared.errors import StoreUnavailable

# What a Redis client raises when the store is down, restarting or too slow: redis-py's own
# errors, and the OS's for a socket it did not wrap (``TimeoutError`` is an ``OSError``).
STORE_FAILURES: tuple[type[BaseException], ...] = (RedisError, OSError)


def store_unavailable(exc: BaseException, what: str = "task store") -> StoreUnavailable:
    """The client error for a store failure ``exc`` (503, ``Retry-After``)."""
    return StoreUnavailable(f"{what} unreachable: {type(exc).__name__}")


@contextmanager
def store_errors(what: str = "task store") -> Iterator[None]:
    """Raise ``StoreUnavailable`` for any store failure inside the block (``what`` names the
    store in the message: the task store, the broker)."""
    try:
        yield
    except STORE_FAILURES as exc:
        raise store_unavailable(exc, what) from exc
