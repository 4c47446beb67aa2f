"""The cyclic garbage collector, tuned for a server that holds many long-lived objects.

Whatever is alive when a collection runs is walked again. ``tune`` runs once at startup:

- it freezes what startup built (modules, the app, the task registry: it lives as long as the
  process), so no collection walks it again;
- it makes full collections rare (after ``FULL_EVERY`` collections of the middle generation
  instead of 10). A full collection walks every object of every connection: with 10,000
  Socket.IO clients it stopped the gateway for 1.5 s (P5, measured with the pause hook below),
  while young collections take well under a millisecond. The price: a garbage cycle that
  survived to the old generation lives longer. The young thresholds stay CPython's: a larger
  young generation means longer pauses, and the relay's tail latency is worth more.

``paused`` turns collection off for a bounded stretch of synchronous work that builds many
objects it keeps (the batch builders), and back on after it; reference counting frees
everything as usual meanwhile. ``PAUSES`` measures every collection (``/metrics``:
``taskgate_gc_pause_seconds_total`` and ``taskgate_gc_collections_total`` by generation).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Pauses:
    """How long the collector stopped the process, per generation (a ``gc.callbacks`` hook)."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.total_s = [0.0, 0.0, 0.0]
        self.window_max_s = [0.0, 0.0, 0.0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        gen = int(info.get("generation", 2))
        took = time.perf_counter() - self._started
        self.count[gen] += 1
        self.total_s[gen] += took
        self.window_max_s[gen] = max(self.window_max_s[gen], took)

    def take_max_ms(self) -> list[float]:
        """The longest pause per generation since the last call, in ms."""
        out = [round(s * 1000, 3) for s in self.window_max_s]
        self.window_max_s = [0.0, 0.0, 0.0]
        return out


PAUSES = Pauses()


# Full collections only after this many collections of the middle generation (CPython: 10).
FULL_EVERY = 1000


def tune() -> None:
    gc.collect()
    gc.freeze()
    gen0, gen1, _ = gc.get_threshold()
    gc.set_threshold(gen0, gen1, FULL_EVERY)
    if PAUSES not in gc.callbacks:
        gc.callbacks.append(PAUSES)


@contextmanager
def paused() -> Iterator[None]:
    """No cyclic collection inside the block (it must not await)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
