"""P5: 10,000 authenticated Socket.IO websocket clients on one gateway process.

Each client is its own user (its own token, verified on connect) and holds its connection for
``seconds`` while simulated workers publish 1,000 updates/s over their tasks; the gateway sends
its ``heartbeat`` event every 15 s and Engine.IO pings every 20 s, which the clients answer.
Measured: connections dropped, the fewest heartbeats and pings any client saw, updates
delivered, client-visible lag, the gateway's event-loop lag (``gateway.process.looplag``) and
its RSS growth per connection, against a bare aiohttp websocket server (the bare subscriber of
P3, with the same clients, the same 1,000 updates/s) held for a shorter time.

The simulated workers publish progress but never beat (``worker.heartbeat``), so the
gateway's stall watch (``gateway/tasks/stalls.py``) would mark every task stalled 15 s after it
started, 1,000 per 5 s round: up to 10,000 more ``task`` events inside the window, each with
the stamp of the task's previous update (the move to RUNNING enters the running set since
c43eba7). Live workers beat, so P5 gives the gateway a beat interval (``STALL_WATCH_S``) that
keeps the watch from running a round during the run. ``stalled``, ``unstamped`` and
``stale_seq`` (``bench/clients.py``) say whether any such event arrived anyway.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.harness import Results
from bench.rig import STALL_WATCH_S, Rig

RATE = 1000.0
HEARTBEAT_S = 15.0
PING_S = 20.0


def _hold(rig: Rig, seconds: float) -> dict[str, Any]:
    rss_connected = rig.rss()
    step = rig.step(RATE, seconds, "lua")
    assert rig.clients is not None
    # The window is still open: the counts of task events that were not publishers' updates.
    extra = rig.clients.collect()
    for name in ("stalled", "unstamped", "stale_seq"):
        step[name] = extra[name]
    step["rss_connected"] = rss_connected
    step["rss_per_conn"] = (rss_connected - rig.rss_idle) / max(1, rig.connect_info["connected"])
    return step


def run(
    results: Results,
    redis_url: str,
    work: Path,
    *,
    seconds: float = 120.0,
    n_clients: int = 10_000,
    baseline_seconds: float = 10.0,
    redis_pid: int | None = None,
) -> None:
    procs = 4
    out: dict[str, dict[str, Any]] = {}
    for kind, hold in (("gateway", seconds), ("bare", baseline_seconds)):
        rig = Rig(
            kind,
            redis_url,
            work,
            n_clients,
            client_procs=procs,
            spread_addrs=True,
            connect_parallel=32,
            redis_pid=redis_pid,
            extra_env={"TASKGATE_TASK_HEARTBEAT_S": STALL_WATCH_S} if kind == "gateway" else None,
        )
        try:
            rig.start()
            s = _hold(rig, hold)
            s["connect_s"] = rig.connect_info["seconds"]
            s["connected"] = rig.connect_info["connected"]
            out[kind] = s
        finally:
            rig.stop()
    tg, bare = out["gateway"], out["bare"]
    want_hb = int(seconds // HEARTBEAT_S) - 1
    want_ping = int(seconds // PING_S) - 1
    short = " (shortened run)" if seconds < 120 else ""
    results.add(
        "P5",
        f"taskgate, {n_clients:,} clients, {seconds:.0f}s{short}",
        "connections held",
        float(tg["open"]),
        "conns",
        connect_s=tg["connect_s"],
        dropped=tg["disconnects"],
        min_heartbeats=tg["min_heartbeats"],
        min_pings=tg["min_pings"],
        delivered=tg["complete"],
        not_updates=f"{tg['stalled']}/{tg['unstamped']}/{tg['stale_seq']}",
        p99_ms=tg["p99_ms"],
        loop_p99_ms=tg["loop_p99_ms"] or math.nan,
        loop_max_ms=tg["loop_max_ms"] or math.nan,
        gc_max_ms_gen012="/".join(f"{v:g}" for v in tg.get("gc_max_ms") or []) or "n/a",
        server_cpu_cores=tg["cpu"]["server"],
    )
    results.add(
        "P5",
        "taskgate",
        "RSS per connection",
        tg["rss_per_conn"] / 1024,
        "KiB",
        rss_idle_mib=(tg["rss_connected"] - tg["rss_per_conn"] * tg["connected"]) / 2**20,
        rss_connected_mib=tg["rss_connected"] / 2**20,
    )
    results.add(
        "P5",
        f"bare aiohttp websocket, {n_clients:,} clients, {baseline_seconds:.0f}s",
        "RSS per connection",
        bare["rss_per_conn"] / 1024,
        "KiB",
        connect_s=bare["connect_s"],
        dropped=bare["disconnects"],
        p99_ms=bare["p99_ms"],
        loop_p99_ms=bare["loop_p99_ms"] or math.nan,
        rss_connected_mib=bare["rss_connected"] / 2**20,
    )
    held = tg["open"] == n_clients and tg["disconnects"] == 0
    hb_ok = tg["min_heartbeats"] >= max(1, want_hb) and tg["min_pings"] >= max(1, want_ping)
    results.check(
        "P5", "all connections held, none dropped", float(tg["open"]), f"= {n_clients:,}", held
    )
    results.check(
        "P5",
        "heartbeats and pings held (fewest per client)",
        float(tg["min_heartbeats"]),
        f">= {max(1, want_hb)} hb, {max(1, want_ping)} ping",
        hb_ok,
        note=f"min pings {tg['min_pings']}",
    )
    results.check(
        "P5",
        "updates delivered at 1,000/s",
        tg["complete"],
        ">= 0.99, <= 1",
        bool(0.99 <= tg["complete"] <= 1.0),
        note=(
            f"other task events: {tg['stalled']} stalled, {tg['unstamped']} unstamped, "
            f"{tg['stale_seq']} not above the last seq"
        ),
    )
    loop_p99 = tg["loop_p99_ms"] if tg["loop_p99_ms"] is not None else math.nan
    results.check(
        "P5", "gateway event-loop lag p99 (ms)", loop_p99, "<= 50 ms", bool(loop_p99 <= 50)
    )
    # Issue 18, item 6: at most twice the bare websocket's memory per connection.
    results.ratio(
        "P5",
        "RSS/conn taskgate / bare websocket",
        tg["rss_per_conn"],
        bare["rss_per_conn"],
        at_most=2,
    )
