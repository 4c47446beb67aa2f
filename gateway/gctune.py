"""The cyclic garbage collector, tuned for a server that allocates much and leaks little.

A request or an update allocates dozens of short-lived dicts and lists, almost none in cycles;
with CPython's default thresholds (700, 10, 10) the young generation is collected every few
requests and whatever is alive at that moment (a 10,000-task batch being built, 10,000
connections' state) is walked again and again. ``tune`` runs once at startup: it freezes what
startup built (modules, the app, the task registry: it lives as long as the process) so full
collections skip it, and collects the young generation less often. ``paused`` turns collection
off for a bounded stretch of synchronous work that builds many objects it keeps (the batch
builders), and back on after it; reference counting frees everything as usual meanwhile.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

GEN0_THRESHOLD = 20_000


def tune() -> None:
    gc.collect()
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, GEN0_THRESHOLD), gen1, gen2)


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
