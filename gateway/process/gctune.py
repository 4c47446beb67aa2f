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

- it collects the young generations on a clock (``YOUNG_EVERY_S``), not only when allocations
  outnumber deallocations by 700. With 10,000 connections, python-engineio's ping tasks are
  replaced steadily (each ping cycle's task, coroutine, sleep future and timer freed, new ones
  made), so the count CPython triggers on hardly moves while the new objects pile up in the
  young generation: P5 saw young collections of 60,000 objects taking 50-200 ms of CPU. On the
  clock each young collection finds what a tenth of a second left (docs/PERFORMANCE.md, "P5
  memory per connection").

``paused`` turns collection off for a bounded stretch of synchronous work that builds many
objects it keeps (the batch builders), and back on after it; reference counting frees
everything as usual meanwhile. ``PAUSES`` measures every collection (``/metrics``:
``taskgate_gc_pause_seconds_total`` and ``taskgate_gc_collections_total`` by generation).
"""

from __future__ import annotations

import asyncio
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
# How often the young generation is collected on the clock (the middle one every tenth time,
# as CPython's threshold of 10 says).
YOUNG_EVERY_S = 0.1


def tune() -> None:
    gc.collect()
    gc.freeze()
    gen0, gen1, _ = gc.get_threshold()
    gc.set_threshold(gen0, gen1, FULL_EVERY)
    if PAUSES not in gc.callbacks:
        gc.callbacks.append(PAUSES)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return  # no loop (a batch in a plain process): CPython's triggers only
    young_on_the_clock(loop)


def young_on_the_clock(loop: asyncio.AbstractEventLoop, every_s: float = YOUNG_EVERY_S) -> None:
    """Collect the young generation every ``every_s`` on ``loop`` (the middle one too once its
    count reaches its threshold), between two callbacks, for as long as the loop runs."""

    def tick() -> None:
        if loop.is_closed():
            return
        if gc.isenabled():
            gc.collect(1 if gc.get_count()[1] >= gc.get_threshold()[1] else 0)
        loop.call_later(every_s, tick)

    loop.call_later(every_s, tick)


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
