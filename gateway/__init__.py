"""The taskgate gateway: aiohttp + python-socketio, one asyncio loop, no blocking calls."""

from gateway.app import create_app
from gateway.tasks.service import TaskManager

__all__ = ["TaskManager", "create_app"]
