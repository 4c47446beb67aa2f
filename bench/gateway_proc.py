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
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import tracemalloc
from pathlib import Path

from bench.harness import raise_fd_limit, rss_bytes
from gateway.cli.commands import _install_uvloop, serve
from gateway.process.looplag import start_from_env
from shared.logging import setup_logging
from shared.settings import Settings


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
    if os.environ.get("BENCH_TRACEMALLOC"):
        tracemalloc.start(int(os.environ["BENCH_TRACEMALLOC"]))
    asyncio.run(_main(settings))


if __name__ == "__main__":
    main()
