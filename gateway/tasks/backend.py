"""Celery's result backend, as the gateway needs it: a Redis client for chord counters.

The records' Redis unless ``CELERY_BACKEND_URL`` names another; that one is opened on first use
and closed with the gateway.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from shared.redis_client import async_client
from shared.settings import Settings

BACKEND_TIMEOUT_S = 3.0


class ResultBackend:
    def __init__(self, settings: Settings, records_client: aioredis.Redis) -> None:
        self.settings = settings
        self.records_client = records_client
        self._own: aioredis.Redis | None = None

    def client(self) -> aioredis.Redis:
        url = self.settings.effective_backend_url
        if url is None or url == self.settings.redis_url:
            return self.records_client
        if self._own is None:
            self._own = async_client(url, socket_timeout=BACKEND_TIMEOUT_S)
        return self._own

    async def close(self) -> None:
        if self._own is not None:
            await self._own.aclose()
            self._own = None
