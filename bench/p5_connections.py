"""P5: 10,000 authenticated Socket.IO websocket clients on one gateway process.

Each client is its own user (its own token, verified on connect) and holds its connection for
``seconds`` while simulated workers publish 1,000 updates/s over their tasks; the gateway sends
its ``heartbeat`` event every 15 s and Engine.IO pings every 20 s, which the clients answer.
Measured: connections dropped, the fewest heartbeats and pings any client saw, updates
delivered, client-visible lag, the gateway's event-loop lag (``gateway.process.looplag``) and
its RSS growth per connection, against a bare aiohttp websocket server (the bare subscriber of
P3, with the same clients, the same 1,000 updates/s) held for a shorter time.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.harness import Results
from bench.rig import Rig

RATE = 1000.0
HEARTBEAT_S = 15.0
PING_S = 20.0


def _hold(rig: Rig, seconds: float) -> dict[str, Any]:
    rss_connected = rig.rss()
    step = rig.step(RATE, seconds, "lua")
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
        ">= 0.99",
        bool(tg["complete"] >= 0.99),
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
