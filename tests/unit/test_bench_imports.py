"""Every benchmark module imports (the suite does not run ``python -m bench``; a broken import
there would otherwise show only when someone runs it)."""

from __future__ import annotations

import importlib
import pkgutil

import bench


def test_every_bench_module_imports() -> None:
    names = [m.name for m in pkgutil.iter_modules(bench.__path__, "bench.")]
    for name in names:  # bench.__main__ too: what `python -m bench` imports first
        importlib.import_module(name)
    assert {"bench.__main__", "bench.p1_submit", "bench.p7_progress", "bench.p9_e2e"} <= set(names)
