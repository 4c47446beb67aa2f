"""The stall watch: marks RUNNING tasks whose worker stopped beating as ``stalled``.

Workers stamp each running task's record every ``TASKGATE_TASK_HEARTBEAT_S`` seconds (see
``worker.runner.Heartbeat``). A task three intervals without a heartbeat has lost its worker
(killed, frozen, cut off): every gateway checks once per interval and marks such tasks with
``STALL_LUA``, which bumps ``seq`` and publishes, so owners see ``"stalled": true`` until the
task moves again (a heartbeat, progress, a rerun after redelivery, or its end).
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from shared.records import AsyncRecords
from shared.redis_client import raise_if_cancel_swallowed

log = logging.getLogger("taskgate.stalls")

STALE_AFTER_BEATS = 3


async def watch_stalls(records: AsyncRecords, interval: float) -> None:
    """Run until cancelled; a Redis error skips one round."""
    stale_after = STALE_AFTER_BEATS * interval
    while True:
        raise_if_cancel_swallowed()
        await asyncio.sleep(interval)
        try:
            async with asyncio.timeout(max(interval, 3.0)):
                marked = await records.mark_stalled(stale_after)
        except (RedisError, OSError) as exc:
            log.debug("stall watch skipped a round: %s", type(exc).__name__)
            continue
        for task_id in marked:
            log.warning("task %s is stalled: no heartbeat for %.1fs", task_id, stale_after)
