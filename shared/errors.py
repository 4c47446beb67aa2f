"""The error tree shared by the gateway and the workers.

::

    TaskgateError                  code            HTTP
    ├── ConfigError                config          (fails at start, never on a request)
    ├── BadRequest                 bad_request     400  malformed JSON, wrong content type
    ├── AuthError                  unauthorized    401  no, bad or expired token
    ├── NotFound                   not_found       404  unknown id, or another user's
    ├── Conflict                   conflict        409  idempotency key reused with another body
    ├── PayloadTooLarge            too_large       413
    ├── InvalidInput               invalid_input   422  fails a schema; ``details`` names the field
    │   └── UnknownTask            unknown_task    422
    ├── RequestTimeout             request_timeout 408  the request body did not arrive in time
    ├── ResultTimeout              timeout         408  the task did not end within the wait
    ├── RateLimited                rate_limited    429  ``retry_after`` seconds
    ├── BrokerUnavailable          broker_unavailable 503  nothing was accepted
    │   └── StoreUnavailable       store_unavailable  503  Redis down, restarting or busy;
    │                                                      ``retry_after`` seconds
    ├── TaskCancelled              (worker side: raised inside a task to stop it cooperatively)
    └── RetryRequested             (worker side: ``ctx.retry()``, to run the task again)

Every error renders to ``{"error": {"code", "message", "details"?}}``.
"""

from __future__ import annotations

from typing import Any


class TaskgateError(Exception):
    """Base of every error taskgate raises on purpose."""

    code = "error"
    http_status = 500

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return {"error": body}


class ConfigError(TaskgateError):
    """A setting is missing or malformed; the message is one line naming the variable."""

    code = "config"


class BadRequest(TaskgateError):
    code = "bad_request"
    http_status = 400


class AuthError(TaskgateError):
    code = "unauthorized"
    http_status = 401


class NotFound(TaskgateError):
    code = "not_found"
    http_status = 404


class Conflict(TaskgateError):
    code = "conflict"
    http_status = 409


class PayloadTooLarge(TaskgateError):
    code = "too_large"
    http_status = 413


class InvalidInput(TaskgateError):
    code = "invalid_input"
    http_status = 422


class UnknownTask(InvalidInput):
    code = "unknown_task"


class RequestTimeout(TaskgateError):
    """The client did not send its request body within the gateway's body timeout."""

    code = "request_timeout"
    http_status = 408


class ResultTimeout(TaskgateError):
    """The task did not end within the wait (``?wait=``, ``execute_task``); it keeps running."""

    code = "timeout"
    http_status = 408


class RateLimited(TaskgateError):
    code = "rate_limited"
    http_status = 429

    def __init__(self, message: str, *, retry_after: float, details: Any = None) -> None:
        super().__init__(message, details=details)
        self.retry_after = retry_after


class BrokerUnavailable(TaskgateError):
    code = "broker_unavailable"
    http_status = 503


class StoreUnavailable(BrokerUnavailable):
    """The records' Redis is down, restarting, or busy past the pool's wait: nothing was done,
    and the same request may succeed in ``retry_after`` seconds."""

    code = "store_unavailable"

    def __init__(self, message: str, *, retry_after: float = 1.0, details: Any = None) -> None:
        super().__init__(message, details=details)
        self.retry_after = retry_after


class TaskCancelled(TaskgateError):
    """Raised inside a running task (by ``ctx.progress`` or ``ctx.raise_if_cancelled``)."""

    code = "cancelled"


class RetryRequested(TaskgateError):
    """Raised by ``ctx.retry(countdown=, exc=)``: run the task again, if its policy allows."""

    code = "retry"

    def __init__(self, countdown: float | None = None, exc: BaseException | None = None) -> None:
        super().__init__(str(exc) if exc is not None else "retry requested")
        self.countdown = countdown
        self.exc = exc
