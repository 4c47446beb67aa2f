"""The gateway's garbage-collector tuning (``gateway.process.gctune``)."""

from __future__ import annotations

import gc
from typing import Any

from gateway.process import gctune


def test_gc_tuning_freezes_startup_and_measures_pauses() -> None:
    before = gc.get_threshold()
    try:
        gctune.tune()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[2] == gctune.FULL_EVERY
        counted = sum(gctune.PAUSES.count)
        for _ in range(50_000):
            cycle: list[Any] = []
            cycle.append(cycle)
        assert sum(gctune.PAUSES.count) > counted
        assert max(gctune.PAUSES.take_max_ms()) > 0
        with gctune.paused():
            assert not gc.isenabled()
        assert gc.isenabled()
    finally:
        gc.callbacks.remove(gctune.PAUSES)
        gc.unfreeze()
        gc.set_threshold(*before)
