"""P7: what ``ctx.progress`` costs a task that reports on every iteration of a tight loop.

The same loop of ``N`` iterations, each doing one item of work (a SHA-256 of 1 KiB, about a
microsecond, and of 8 KiB, about six: stand-ins for a small and an ordinary item), runs three
ways in one process against the run's redis-server, each on a RUNNING record of its own, as a
worker runs a task:

- bare: the loop alone;
- taskgate: ``ctx.progress(percent)`` on every iteration, with the default coalescing (at most
  ``TASKGATE_PROGRESS_RATE`` = 20 updates per second published; worker.context);
- every update published (``progress_rate=0``, what ``ctx.progress`` did before coalescing):
  measured on ``N_UNCOALESCED`` iterations and scaled to ``N``.

Reported per item size: seconds, the taskgate / bare ratio (target <= 1.5x), nanoseconds per
call (what coalescing leaves: a Python method call, a clock read, a tuple), and the updates
actually published (the record's ``seq``). Best of ``ROUNDS``.
"""

from __future__ import annotations

import hashlib
import time
import uuid

import redis

from bench.harness import Results
from shared.keys import Keys
from shared.records import SyncRecords, new_record_fields
from shared.status import TaskStatus
from worker.context import Context

N = 100_000
N_UNCOALESCED = 2_000
ROUNDS = 3
ITEMS = {"1 KiB item": b"x" * 1024, "8 KiB item": b"x" * 8192}


def _running(records: SyncRecords) -> str:
    task_id = str(uuid.uuid4())
    records.create("bench", new_record_fields(task_id, "demo.count", "fast", time.time()), 0)
    records.transition(task_id, "status", status=TaskStatus.RUNNING)
    return task_id


def _loop(ctx: Context | None, n: int, block: bytes) -> float:
    sha = hashlib.sha256
    started = time.perf_counter()
    if ctx is None:
        for _ in range(n):
            sha(block).digest()
    else:
        for i in range(n):
            sha(block).digest()
            ctx.progress(100.0 * i / n)
        ctx.close()
    return time.perf_counter() - started


def run(results: Results, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    records = SyncRecords(client, Keys(f"p7-{uuid.uuid4().hex[:6]}:"), 3600)
    try:
        for label, block in ITEMS.items():
            _one(results, records, label, block)
    finally:
        client.close()


def _one(results: Results, records: SyncRecords, label: str, block: bytes) -> None:
    bare = min(_loop(None, N, block) for _ in range(ROUNDS))
    coalesced = []
    published = 0
    for _ in range(ROUNDS):
        task_id = _running(records)
        coalesced.append(_loop(Context(task_id, records), N, block))
        snap = records.snapshot(task_id)
        published = int(snap["seq"]) - 2 if snap else 0
    taskgate = min(coalesced)
    every = _loop(Context(_running(records), records, progress_rate=0), N_UNCOALESCED, block)
    every_scaled = every * N / N_UNCOALESCED
    metric = f"{N:,} iterations, {label}"
    results.add("P7", "bare loop", metric, round(bare, 3), "s")
    results.add("P7", "taskgate ctx.progress (coalesced, 20/s)", metric, round(taskgate, 3),
                "s", ns_per_call=round((taskgate - bare) / N * 1e9),
                published=published)  # fmt: skip
    results.add("P7", "every update published (before)", metric + " (scaled)",
                round(every_scaled, 1), "s", measured_iterations=N_UNCOALESCED)  # fmt: skip
    results.ratio("P7", f"coalesced / bare, {label}", taskgate, bare, at_most=1.5)
    results.ratio("P7", f"every update / bare, {label}", every_scaled, bare,
                  note="what a progress call per iteration cost before coalescing")  # fmt: skip


def main() -> None:
    import tempfile
    from pathlib import Path

    from bench.harness import redis_server, render_table

    results = Results()
    with tempfile.TemporaryDirectory(prefix="taskgate-p7-") as tmp, redis_server(Path(tmp)) as r:
        run(results, r.url)
    print(render_table(results))


if __name__ == "__main__":
    main()
