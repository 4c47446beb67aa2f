"""An opt-in event-loop lag sampler, for benchmarks and diagnosis.

A task sleeps for a fixed interval over and over and records how late it wakes up: the time the
loop was busy with something else. With ``TASKGATE_LOOPLAG_FILE`` set, ``start_from_env`` starts
it and, on every ``SIGUSR1``, writes the lag percentiles since the previous signal (and the
process's RSS) as JSON to that file. Without the variable it does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import orjson

from gateway.process import gctune

ENV_FILE = "TASKGATE_LOOPLAG_FILE"
ENV_INTERVAL = "TASKGATE_LOOPLAG_INTERVAL_MS"


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    k = max(0, min(len(values) - 1, math.ceil(q / 100.0 * len(values)) - 1))
    return values[k]


def _rss_bytes() -> int:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class LoopLagSampler:
    """Measures how late a periodic timer fires on the running loop."""

    def __init__(self, interval_s: float = 0.01) -> None:
        self.interval_s = interval_s
        self._lags: list[float] = []
        self._since = time.time()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.interval_s
        while True:
            start = loop.time()
            await asyncio.sleep(interval)
            self._lags.append(max(0.0, loop.time() - start - interval))

    def take(self) -> dict[str, Any]:
        """Percentiles (ms) of the lags since the last call, and the RSS; starts a new window."""
        lags, self._lags = sorted(self._lags), []
        now = time.time()
        window = {
            "since": self._since,
            "until": now,
            "samples": len(lags),
            "p50_ms": _percentile(lags, 50) * 1000,
            "p99_ms": _percentile(lags, 99) * 1000,
            "max_ms": (lags[-1] * 1000) if lags else math.nan,
            "rss_bytes": _rss_bytes(),
            # The longest garbage-collector pause per generation in the window
            # (gateway.process.gctune).
            "gc_max_ms": gctune.PAUSES.take_max_ms(),
        }
        self._since = now
        return window


def start_from_env() -> asyncio.Task[None] | None:
    """Start the sampler on the running loop if ``TASKGATE_LOOPLAG_FILE`` is set."""
    path = os.environ.get(ENV_FILE)
    if not path:
        return None
    interval_ms = float(os.environ.get(ENV_INTERVAL, "10"))
    sampler = LoopLagSampler(interval_ms / 1000.0)
    target = Path(path)

    def dump() -> None:
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(sampler.take()))
        tmp.replace(target)

    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump)
    return asyncio.create_task(sampler.run(), name="taskgate-looplag")
