"""When the client tries a refused request again: ``RetryPolicy``.

Only answers that say nothing was done are retried: 429 (``RateLimited``), 503
(``Unavailable``) and a connection that could not be made (``GatewayUnreachable``). A broken
connection after the request went out (``ConnectionLost``) is never retried: a submit may
have been accepted.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from client.errors import GatewayUnreachable, RateLimited, TaskgateError, Unavailable


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with jitter that honours ``Retry-After``.

    Attempt ``n`` (from 0) waits ``min(cap, base * 2**n)``, scaled by a random factor in
    ``[0.5, 1]`` when ``jitter``; a ``Retry-After`` from the gateway raises that wait to at
    least its value (still capped by ``cap``). After ``attempts`` retries the error is raised.
    ``rate_limited`` (429), ``unavailable`` (503) and ``unreachable`` (no connection) choose
    which refusals are retried.
    """

    attempts: int = 5
    base: float = 0.5
    cap: float = 30.0
    jitter: bool = True
    rate_limited: bool = True
    unavailable: bool = True
    unreachable: bool = True

    def __post_init__(self) -> None:
        if self.attempts < 0 or self.base < 0 or self.cap < 0:
            raise ValueError("attempts, base and cap must not be negative")

    def retries(self, error: TaskgateError, attempt: int) -> bool:
        """Whether to try again after ``error`` on retry number ``attempt`` (from 0)."""
        if attempt >= self.attempts:
            return False
        if isinstance(error, RateLimited):
            return self.rate_limited
        if isinstance(error, GatewayUnreachable):
            return self.unreachable
        if isinstance(error, Unavailable):
            return self.unavailable
        return False

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (from 0)."""
        wait = min(self.cap, self.base * 2.0**attempt)
        if self.jitter:
            wait *= random.uniform(0.5, 1.0)
        if retry_after is not None:
            wait = max(wait, retry_after)
        return min(self.cap, wait)
