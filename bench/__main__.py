"""``python -m bench``: every benchmark of issue 6, side by side with its baselines, one run.

Starts its own redis-server and servers on loopback, prints the table of rates, latencies and
ratios, and writes it to ``bench/results/latest.json`` (and ``latest.md``). See
docs/PERFORMANCE.md for what each benchmark measures and the last results.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench import (
    p1_submit,
    p2_batch,
    p3_relay,
    p4_latency,
    p5_connections,
    p6_validation,
    p7_progress,
    p8_runner,
    p9_e2e,
    p10_ray,
)
from bench.harness import (
    ForeignLoad,
    Results,
    machine_facts,
    raise_fd_limit,
    redis_server,
    render_table,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
ALL = ("p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8", "p9", "p10")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", default=",".join(ALL), help="comma list of p1..p9 (p3 has P4a)")
    parser.add_argument(
        "--p5-seconds",
        type=float,
        default=120.0,
        help="how long the 10,000 connections are held (issue: 2 minutes)",
    )
    parser.add_argument("--p5-clients", type=int, default=10_000)
    parser.add_argument("--p1-seconds", type=float, default=9.0)
    parser.add_argument(
        "--profile",
        action="store_true",
        help="attach py-spy to the gateway in P1 and P3, and to the workers in P8",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "latest.json")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(chosen) - set(ALL)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")

    raise_fd_limit()
    results = Results()
    machine = machine_facts()
    started = time.monotonic()
    failed = False
    with tempfile.TemporaryDirectory(prefix="taskgate-bench-") as tmp:
        work = Path(tmp)
        with redis_server(work) as redis:
            redis_pid = redis.proc.pid if redis.proc is not None else None
            steps = {
                "p1": lambda: p1_submit.run(
                    results, redis.url, work, seconds=args.p1_seconds, profile=args.profile
                ),
                "p2": lambda: p2_batch.run(results, redis.url, work),
                "p3": lambda: p3_relay.run(
                    results, redis.url, work, profile=args.profile, redis_pid=redis_pid
                ),
                "p4": lambda: p4_latency.run(results, redis.url, work),
                "p5": lambda: p5_connections.run(
                    results,
                    redis.url,
                    work,
                    seconds=args.p5_seconds,
                    n_clients=args.p5_clients,
                    redis_pid=redis_pid,
                ),
                "p6": lambda: p6_validation.run(results),
                "p7": lambda: p7_progress.run(results, redis.url),
                "p8": lambda: p8_runner.run(
                    results, redis.url, work, redis_pid=redis_pid, profile=args.profile
                ),
                "p9": lambda: p9_e2e.run(results, redis.url, work, redis_pid=redis_pid),
                "p10": lambda: p10_ray.run(results, redis.url, work),
            }
            for name in ALL:
                if name not in chosen:
                    continue
                t0 = time.monotonic()
                foreign = ForeignLoad()
                foreign.start()
                print(f"[bench] {name} ...", flush=True)
                try:
                    steps[name]()
                except Exception:
                    failed = True
                    results.notes.append(f"{name} failed:\n{traceback.format_exc()}")
                    print(f"[bench] {name} FAILED\n{traceback.format_exc()}", flush=True)
                results.seconds[name] = round(time.monotonic() - t0, 1)
                results.foreign_cpu[name] = round(foreign.stop(), 2)
                print(
                    f"[bench] {name} done in {results.seconds[name]:.0f}s "
                    f"(other processes on the box used {results.foreign_cpu[name]:.2f} cores)",
                    flush=True,
                )
                redis_client_flush(redis.url)
    results.seconds["total"] = round(time.monotonic() - started, 1)
    table = render_table(results)
    print()
    print(table)
    for note in results.notes:
        print()
        print(note)
    print(f"\nwall time {results.seconds['total']:.0f}s; machine: {machine}")
    print(f"seconds per benchmark: {results.seconds}")
    print(f"CPU (cores) used by other processes during each: {results.foreign_cpu}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    data = results.to_json(machine, [sys.executable, "-m", "bench", *(argv or sys.argv[1:])])
    args.out.write_text(json.dumps(data, indent=2))
    args.out.with_suffix(".md").write_text(table + "\n")
    print(f"written {args.out}")
    return 1 if failed else 0


def redis_client_flush(url: str) -> None:
    """Empty the private Redis between benchmarks, so each starts from the same state."""
    from shared.redis_client import sync_client

    client = sync_client(url)
    client.flushall()
    client.close()


if __name__ == "__main__":
    sys.exit(main())
