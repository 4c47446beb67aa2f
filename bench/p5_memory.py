"""Where P5's memory per connection goes: tracemalloc in a real gateway, real clients.

    .venv/bin/python -m bench.p5_memory --clients 2000            # traced (10 frames)
    .venv/bin/python -m bench.p5_memory --clients 2000 --frames 0 # RSS only, no tracing
    .venv/bin/python -m bench.p5_memory --bare                    # the bare websocket server

A gateway process (``bench.gateway_proc``, the same ``serve`` as ``taskgate gateway``) on a
private redis-server, one RUNNING task per user as in P5, then ``--clients`` authenticated
Socket.IO websocket clients (``bench/clients.py``, 2 processes). With ``--frames N`` the gateway
runs under ``tracemalloc`` (``BENCH_TRACEMALLOC``) and dumps a snapshot on ``SIGUSR2`` before
and after the clients connect (after a full collection); this prints the growth per connection
grouped by allocation site (the innermost frame), by traceback and by library, and RSS growth
against traced growth (what tracemalloc does not see: C allocations outside Python's
allocator, allocator slack). Not part of ``python -m bench``; a diagnosis tool.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
import tracemalloc
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.clients import ClientPool
from bench.harness import (
    gateway_env,
    new_prefix,
    raise_fd_limit,
    redis_server,
    rss_bytes,
    start_gateway,
    start_listening,
)
from bench.publishers import prepare_running_tasks
from gateway.cli.embedded import free_port

SITE_PACKAGES = "site-packages/"


def _short(filename: str) -> str:
    if SITE_PACKAGES in filename:
        return filename.split(SITE_PACKAGES, 1)[1]
    for root in ("/work/main/", str(Path(__file__).resolve().parents[1]) + "/"):
        if filename.startswith(root):
            return filename[len(root) :]
    if "/lib/python3" in filename:
        return "stdlib/" + filename.split("/lib/python3", 1)[1].split("/", 1)[1]
    return filename


def _library(filename: str) -> str:
    short = _short(filename)
    if short.startswith("stdlib/"):
        return "stdlib:" + short.split("/")[1].removesuffix(".py")
    return short.split("/")[0].removesuffix(".py")


def _snap(server_pid: int, out: Path, n: int) -> tuple[tracemalloc.Snapshot | None, dict[str, Any]]:
    os.kill(server_pid, signal.SIGUSR2)
    facts_path = out / f"snap-{n}.json"
    deadline = time.monotonic() + 120
    while not facts_path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError("the gateway wrote no snapshot (BENCH_TRACEMALLOC unset?)")
        time.sleep(0.1)
    facts: dict[str, Any] = json.loads(facts_path.read_text())
    return tracemalloc.Snapshot.load(str(out / f"snap-{n}.pickle")), facts


def _report(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, n: int, top: int) -> None:
    kib = 1024
    diff = [d for d in after.compare_to(before, "traceback") if d.size_diff]
    total = sum(d.size_diff for d in diff)
    print(f"\ntraced growth: {total / n:,.0f} B per connection ({total / 2**20:.1f} MiB)")

    by_lib: dict[str, int] = defaultdict(int)
    by_site: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    by_caller: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for d in diff:
        inner = d.traceback[-1] if d.traceback else None
        if inner is None:
            continue
        # The innermost frame outside the standard library: who made the asyncio task, future,
        # deque... (runpy and the loop's run count as the event loop's own).
        caller = next(
            (
                f
                for f in reversed(d.traceback)
                if not _short(f.filename).startswith(("stdlib/", "<"))
            ),
            inner,
        )
        key = f"{_short(caller.filename)}:{caller.lineno}"
        by_caller[key][0] += d.size_diff
        by_caller[key][1] += d.count_diff
        by_lib[_library(inner.filename)] += d.size_diff
        site = f"{_short(inner.filename)}:{inner.lineno}"
        by_site[site][0] += d.size_diff
        by_site[site][1] += d.count_diff
    print("\nby library (innermost frame), bytes per connection:")
    for lib, size in sorted(by_lib.items(), key=lambda kv: -kv[1])[:20]:
        print(f"  {size / n:8.0f}  {lib}")
    print("\nby allocation site (innermost frame): bytes, blocks per connection:")
    for site, (size, count) in sorted(by_site.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"  {size / n:8.0f} {count / n:6.1f}  {site}")
    print("\nby innermost frame outside the stdlib: bytes, blocks per connection:")
    for site, (size, count) in sorted(by_caller.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"  {size / n:8.0f} {count / n:6.1f}  {site}")
    print(f"\nby traceback (top {top}), bytes and blocks per connection, innermost frame first:")
    for d in diff[:top]:
        print(f"  {d.size_diff / n:8.0f} {d.count_diff / n:6.1f}")
        for frame in reversed(d.traceback):
            print(f"        {_short(frame.filename)}:{frame.lineno}")
    print(f"(sizes in bytes; {kib} B = 1 KiB)")


def _run(args: argparse.Namespace) -> None:
    raise_fd_limit()
    users = [f"u{i}" for i in range(args.clients)]
    with tempfile.TemporaryDirectory(prefix="taskgate-p5mem-") as tmp:
        work = Path(tmp)
        snaps = work / "snaps"
        with redis_server(work) as redis:
            prefix = new_prefix("p5mem")
            extra: dict[str, str] = {"TASKGATE_LOG_LEVEL": "WARNING"}
            if args.frames:
                extra |= {
                    "BENCH_TRACEMALLOC": str(args.frames),
                    "BENCH_TRACEMALLOC_DIR": str(snaps),
                }
            if args.bare:
                port = free_port()
                env = gateway_env(redis.url, prefix, port, BENCH_PORT=str(port), **extra)
                argv = [sys.executable, "-m", "bench.baselines", "bare_relay"]
                server = start_listening("bare", argv, env, port, work)
            else:
                server, port = start_gateway(work, redis.url, prefix, instrumented=True, **extra)
            clients: ClientPool | None = None
            try:
                prepare_running_tasks(redis.url, prefix, users)
                time.sleep(1.0)
                before = after = None
                if args.frames and not args.bare:
                    before, facts0 = _snap(server.pid, snaps, 1)
                    rss0 = facts0["rss_bytes"]
                else:
                    rss0 = rss_bytes(server.pid)
                clients = ClientPool(
                    f"http://127.0.0.1:{port}",
                    "raw" if args.bare else "sio",
                    users,
                    2,
                    spread_addrs=True,
                    connect_parallel=32,
                )
                info = clients.connect()
                print(f"connected {info['connected']:,} in {info['seconds']:.1f}s", flush=True)
                time.sleep(args.settle)
                if args.frames and not args.bare:
                    after, facts1 = _snap(server.pid, snaps, 2)
                    rss1 = facts1["rss_bytes"]
                else:
                    rss1 = rss_bytes(server.pid)
                n = max(1, info["connected"])
                print(
                    f"RSS: {rss0 / 2**20:.1f} -> {rss1 / 2**20:.1f} MiB, "
                    f"{(rss1 - rss0) / n / 1024:.1f} KiB per connection"
                )
                if before is not None and after is not None:
                    traced = facts1["traced_bytes"] - facts0["traced_bytes"]
                    over = (
                        facts1["tracemalloc_overhead_bytes"] - facts0["tracemalloc_overhead_bytes"]
                    )
                    print(
                        f"traced: {traced / n / 1024:.1f} KiB per connection; tracemalloc's own "
                        f"{over / n / 1024:.1f} KiB; RSS - traced - tracemalloc's: "
                        f"{(rss1 - rss0 - traced - over) / n / 1024:.1f} KiB; "
                        f"gc objects {(facts1['gc_objects'] - facts0['gc_objects']) / n:.1f} "
                        "per connection"
                    )
                    _report(before, after, n, args.top)
            finally:
                if clients is not None:
                    clients.close(graceful=False)
                server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--frames", type=int, default=10, help="tracemalloc frames; 0: off")
    parser.add_argument("--settle", type=float, default=2.0)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--bare", action="store_true", help="the bare websocket server (RSS)")
    _run(parser.parse_args())


if __name__ == "__main__":
    main()
