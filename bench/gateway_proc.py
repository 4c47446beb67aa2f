"""The gateway as ``taskgate gateway`` runs it, plus what a big benchmark needs around it.

Same settings, same ``gateway.cli.commands.serve``, same uvloop; in addition the open-file limit is
raised (10,000 sockets) and the loop-lag sampler of ``gateway.process.looplag`` runs (enabled by
``TASKGATE_LOOPLAG_FILE``, dumped on SIGUSR1).

Opt-in memory tracing (``bench/p5_memory.py``): with ``BENCH_TRACEMALLOC=<frames>`` set,
``tracemalloc`` starts before the gateway is built (after this module's imports, which take
too long traced on a busy box), keeping that many frames per allocation, and every ``SIGUSR2``
dumps a snapshot to ``BENCH_TRACEMALLOC_DIR/snap-<n>.pickle`` with ``snap-<n>.json`` beside it
(RSS, traced bytes, the collector's object count). Off by default: tracing slows the gateway
and doubles its memory.

``BENCH_GC_LOG=<path>``: every garbage collection that stops the gateway for more than 5 ms is
appended to that file as a JSON line with its wall time and the CPU time the process spent in it
(``time.thread_time``): a pause whose CPU time is far below its wall time is the process waiting
for a core (the box is shared), not the collector's work.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import time
import tracemalloc
from pathlib import Path

from bench.harness import raise_fd_limit, rss_bytes
from gateway.cli.commands import _install_uvloop, serve
from gateway.process.looplag import start_from_env
from shared.logging import setup_logging
from shared.settings import Settings


class _GCLog:
    """A ``gc.callbacks`` hook writing each long collection (see the module doc)."""

    def __init__(self, path: str, over_s: float = 0.005) -> None:
        self.path = path
        self.over_s = over_s
        self.wall = self.cpu = 0.0
        self.young: int | None = None
        self.types: list[tuple[str, int]] | None = None

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.young = self.types = None
            if os.environ.get("BENCH_GC_LOG_YOUNG") and info.get("generation", 2) < 2:
                young = [o for g in range(info["generation"] + 1) for o in gc.get_objects(g)]
                self.young = len(young)
                if len(young) > 20_000:
                    counts: dict[str, int] = {}
                    for o in young:
                        name = type(o).__qualname__
                        counts[name] = counts.get(name, 0) + 1
                    self.types = sorted(counts.items(), key=lambda kv: -kv[1])[:8]
                del young
            self.wall, self.cpu = time.perf_counter(), time.thread_time()
            return
        wall = time.perf_counter() - self.wall
        if wall < self.over_s:
            return
        line = {
            "at": time.time(),
            "generation": info.get("generation"),
            "wall_ms": round(wall * 1000, 3),
            "cpu_ms": round((time.thread_time() - self.cpu) * 1000, 3),
            "collected": info.get("collected"),
            "counts": gc.get_count(),
            "young_objects": self.young,
            "young_types": self.types,
        }
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")


def _install_snapshots() -> None:
    """``SIGUSR2``: a tracemalloc snapshot to ``BENCH_TRACEMALLOC_DIR`` (see the module doc)."""
    if not tracemalloc.is_tracing():
        return
    out = Path(os.environ.get("BENCH_TRACEMALLOC_DIR", "."))
    out.mkdir(parents=True, exist_ok=True)
    taken = [0]

    def dump() -> None:
        n = taken[0] = taken[0] + 1
        gc.collect()  # count only what is alive
        snap = tracemalloc.take_snapshot()
        snap.dump(str(out / f"snap-{n}.pickle"))
        current, peak = tracemalloc.get_traced_memory()
        facts = {
            "rss_bytes": rss_bytes(os.getpid()),
            "traced_bytes": current,
            "traced_peak_bytes": peak,
            "tracemalloc_overhead_bytes": tracemalloc.get_tracemalloc_memory(),
            "gc_objects": len(gc.get_objects()),
            "gc_frozen": gc.get_freeze_count(),
        }
        tmp = out / f"snap-{n}.json.tmp"
        tmp.write_text(json.dumps(facts))
        tmp.replace(out / f"snap-{n}.json")

    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, dump)


async def _main(settings: Settings) -> None:
    sampler = start_from_env()
    _install_snapshots()
    try:
        await serve(settings)
    finally:
        if sampler is not None:
            sampler.cancel()


def main() -> None:
    raise_fd_limit()
    settings = Settings.from_env()
    settings.require_secret()
    settings.require_redis()
    setup_logging(settings.log_level)
    _install_uvloop()
    if os.environ.get("BENCH_GC_LOG"):
        gc.callbacks.append(_GCLog(os.environ["BENCH_GC_LOG"]))
    if os.environ.get("BENCH_TRACEMALLOC"):
        tracemalloc.start(int(os.environ["BENCH_TRACEMALLOC"]))
    asyncio.run(_main(settings))


if __name__ == "__main__":
    main()
