"""How the process's Redis connection pools are doing: waits for a free connection, their time,
and the waits that gave up. Kept by ``shared.redis_client``'s pools, read by the gateway's
``/metrics`` (plain numbers: no metrics library needed where it is counted)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class PoolStats:
    waits: int = 0
    wait_s: float = 0.0
    timeouts: int = 0

    def waited(self, seconds: float) -> None:
        self.waits += 1
        self.wait_s += seconds

    def gave_up(self, seconds: float) -> None:
        self.waited(seconds)
        self.timeouts += 1


POOL = PoolStats()
