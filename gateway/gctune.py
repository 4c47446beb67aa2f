"""The cyclic garbage collector, tuned for a server that allocates much and leaks little.

Whatever is alive when a collection runs is walked again: everything startup built (modules,
the app, the task registry; it lives as long as the process) on every full collection, and the
objects of a 10,000-task batch being built on every young one. ``tune`` runs once at startup
and freezes what startup built, so collections skip it. ``paused`` turns collection off for a
bounded stretch of synchronous work that builds many objects it keeps (the batch builders),
and back on after it; reference counting frees everything as usual meanwhile. The thresholds
stay CPython's: a larger young generation means fewer but longer pauses, and the relay's tail
latency (P4) is worth more than the little it saves.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


def tune() -> None:
    gc.collect()
    gc.freeze()


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
