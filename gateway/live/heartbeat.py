"""The ``heartbeat`` event: ``{"ts"}`` to every connected socket every ``TASKGATE_HEARTBEAT_S``."""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.live.fanout import Fanout

log = logging.getLogger("taskgate.heartbeat")


async def heartbeat(fanout: Fanout, interval: float) -> None:
    """Runs until cancelled; a failed emit is logged and the beat goes on."""
    while True:
        await asyncio.sleep(interval)
        try:
            await fanout.to_all("heartbeat", {"ts": time.time()})
        except Exception:
            log.exception("heartbeat emit failed")
