"""A Python client for a remote taskgate gateway: its URL and a token are all it needs.

``AsyncClient`` for asyncio code and ``Client`` (same methods, blocking; safe inside a thread
whose loop is running) submit, read, list, cancel and wait for tasks over the HTTP API, and
``follow`` a task's snapshots live over Socket.IO. Errors are ``TaskgateError`` subclasses
named after the contract's codes (``client.errors``); ``RetryPolicy`` retries 429 and 503.

It needs aiohttp, python-socketio and orjson, and nothing of the gateway or the workers.
"""

from client.async_client import AsyncClient, is_terminal, submit_body
from client.errors import (
    BadRequest,
    Conflict,
    ConnectionLost,
    GatewayUnreachable,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RequestTimeout,
    TaskgateError,
    Timeout,
    Unauthorized,
    Unavailable,
    UnknownTask,
)
from client.follow import TERMINAL, Snapshot
from client.retry import RetryPolicy
from client.sync_client import Client

__all__ = [
    "TERMINAL",
    "AsyncClient",
    "BadRequest",
    "Client",
    "Conflict",
    "ConnectionLost",
    "GatewayUnreachable",
    "InvalidInput",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "RequestTimeout",
    "RetryPolicy",
    "Snapshot",
    "TaskgateError",
    "Timeout",
    "Unauthorized",
    "Unavailable",
    "UnknownTask",
    "is_terminal",
    "submit_body",
]
