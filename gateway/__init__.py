"""The taskgate gateway: aiohttp + python-socketio, one asyncio loop, no blocking calls.

``create_app`` (the server, ``gateway.app``) and ``TaskManager`` (the in-process API,
``gateway.inprocess``) are imported on first use, so importing one room of the gateway does not
import all of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.app import create_app
    from gateway.inprocess import TaskManager

__all__ = ["TaskManager", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from gateway.app import create_app

        return create_app
    if name == "TaskManager":
        from gateway.inprocess import TaskManager

        return TaskManager
    raise AttributeError(f"module 'gateway' has no attribute {name!r}")
