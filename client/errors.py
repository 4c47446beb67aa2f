"""The gateway's error codes as exceptions, for the client and the CLI.

::

    TaskgateError                    code                 HTTP
    ├── BadRequest                   bad_request          400  malformed body or query
    ├── Unauthorized                 unauthorized         401  no, bad or expired token
    ├── NotFound                     not_found            404  unknown id, or another user's
    ├── Timeout                      timeout              408  ``result(wait=)``: not ended yet
    │   └── RequestTimeout           request_timeout      408  the body did not arrive in time
    ├── Conflict                     conflict             409  idempotency key reused
    ├── PayloadTooLarge              too_large            413
    ├── InvalidInput                 invalid_input        422  ``field`` names the path
    │   └── UnknownTask              unknown_task         422
    ├── RateLimited                  rate_limited         429  ``retry_after`` seconds
    ├── Unavailable                  broker_unavailable,  503  nothing was accepted;
    │   │                            store_unavailable         ``retry_after`` seconds
    │   └── GatewayUnreachable       unreachable          -    no connection could be made
    └── ConnectionLost               connection_lost      -    the connection broke mid-request

``error_from`` turns an error answer (HTTP, a Socket.IO ack, or one item of a batch) into the
matching exception; an unknown code still gives a ``TaskgateError`` carrying it.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from typing import Any


class TaskgateError(Exception):
    """Base of every error the client raises: the contract's ``code``, ``message`` and
    ``details``, and the HTTP ``status`` when the error came in an HTTP answer."""

    code = "error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        details: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.status = status
        self.details = details

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class BadRequest(TaskgateError):
    """400: the request was malformed (not JSON, a bad query parameter)."""

    code = "bad_request"


class Unauthorized(TaskgateError):
    """401 (or a refused Socket.IO connect): no token, a bad one, or an expired one."""

    code = "unauthorized"


class NotFound(TaskgateError):
    """404: no such task for this user (another user's task answers the same)."""

    code = "not_found"


class Timeout(TaskgateError):
    """408: the task did not end within ``result(wait=)``; it keeps running."""

    code = "timeout"


class RequestTimeout(Timeout):
    """408: the gateway did not receive the request body in time."""

    code = "request_timeout"


class Conflict(TaskgateError):
    """409: an idempotency key was reused with another body."""

    code = "conflict"


class PayloadTooLarge(TaskgateError):
    """413: the request body is over the gateway's limit."""

    code = "too_large"


class InvalidInput(TaskgateError):
    """422: the submit fails the task's schema or the contract; ``field`` is the path of the
    offending field (``input.options.format``, ``priority``), ``reason`` what is wrong."""

    code = "invalid_input"

    @property
    def field(self) -> str | None:
        """The path of the field at fault, when the gateway named one."""
        value = self.details.get("field") if isinstance(self.details, Mapping) else None
        return value if isinstance(value, str) else None

    @property
    def reason(self) -> str | None:
        """What is wrong with ``field``, when the gateway said."""
        value = self.details.get("reason") if isinstance(self.details, Mapping) else None
        return value if isinstance(value, str) else None


class UnknownTask(InvalidInput):
    """422: no task type of that name is registered."""

    code = "unknown_task"


class _RetryAfter(TaskgateError):
    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        details: Any = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code, status=status, details=details)
        self.retry_after = retry_after


class RateLimited(_RetryAfter):
    """429: over the user's submit rate or active-task quota; nothing was accepted.
    ``retry_after`` is the gateway's ``Retry-After`` in seconds."""

    code = "rate_limited"


class Unavailable(_RetryAfter):
    """503: the broker or the gateway's Redis is unreachable; nothing was accepted.
    ``retry_after`` is the gateway's ``Retry-After`` in seconds, when it sent one."""

    code = "broker_unavailable"


class GatewayUnreachable(Unavailable):
    """No connection to the gateway could be made (refused, DNS, TLS): nothing was sent."""

    code = "unreachable"


class ConnectionLost(TaskgateError):
    """The connection broke or timed out after the request was sent: whether it was acted on
    is unknown (a submit may have been accepted), so it is never retried on its own."""

    code = "connection_lost"


BY_CODE: dict[str, type[TaskgateError]] = {
    "bad_request": BadRequest,
    "unauthorized": Unauthorized,
    "not_found": NotFound,
    "timeout": Timeout,
    "request_timeout": RequestTimeout,
    "conflict": Conflict,
    "too_large": PayloadTooLarge,
    "invalid_input": InvalidInput,
    "unknown_task": UnknownTask,
    "rate_limited": RateLimited,
    "broker_unavailable": Unavailable,
    "store_unavailable": Unavailable,
}
BY_STATUS: dict[int, type[TaskgateError]] = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    408: Timeout,
    409: Conflict,
    413: PayloadTooLarge,
    422: InvalidInput,
    429: RateLimited,
    503: Unavailable,
}


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` header in seconds: delta-seconds or an HTTP date; ``None`` if absent
    or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def error_from(
    body: Any, status: int | None = None, retry_after: float | None = None
) -> TaskgateError:
    """The exception for an error answer: ``body`` is ``{"error": {"code", "message",
    "details"?}}`` (anything else still gives an error naming the status)."""
    error = body.get("error") if isinstance(body, Mapping) else None
    if not isinstance(error, Mapping):
        message = f"HTTP {status}" if status is not None else "malformed error answer"
        return TaskgateError(message, code="http_error", status=status)
    code = str(error.get("code") or "error")
    message = str(error.get("message") or code)
    details = error.get("details")
    cls = BY_CODE.get(code) or (BY_STATUS.get(status) if status is not None else None)
    cls = cls or TaskgateError
    if issubclass(cls, _RetryAfter):
        return cls(message, code=code, status=status, details=details, retry_after=retry_after)
    return cls(message, code=code, status=status, details=details)
