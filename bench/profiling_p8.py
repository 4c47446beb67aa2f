"""P8's profile: where a taskgate run's time goes in the pool processes, against plain Celery.

Reads two ``py-spy record --subprocesses -f raw`` files (one line per distinct stack: frames
from the root, ``;``-separated, then the sample count) and splits the pool processes' samples
by the innermost frame that one of ``RULES`` names: a Redis call counts under the runner step
that made it (the RUNNING transition, the heartbeat's first beat, ...), a stack through none
of them is Celery's own work (the task trace, the ack, the result). Samples are py-spy's
non-idle ones (its default): a process sending to Redis or reading its reply counts, one
blocked in the pool's wait for work does not. The worker's main process (the consumer, its
event loop, task events, the pool's pipes) is counted apart.
``python -m bench.profiling_p8 TASKGATE.txt PLAIN.txt [N]`` prints the split.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

# (substring of a frame "function (file)", category); the innermost matching frame wins.
RULES: tuple[tuple[str, str], ...] = (
    ("execute.<locals>.begin", "RUNNING transition with its start checks (Lua)"),
    ("finish (worker/runner.py)", "terminal transition (Lua; outbox copy removed in it)"),
    ("finish.<locals>", "terminal transition (Lua; outbox copy removed in it)"),
    ("Context.cancelled (worker/context.py)", "cancel check (HGET)"),
    ("Heartbeats.beating (worker/heartbeat.py)", "heartbeat: run registered"),
    ("Heartbeats._drop (worker/heartbeat.py)", "heartbeat: run registered"),
    ("(worker/heartbeat.py)", "heartbeat: the process's thread"),
    ("Thread._bootstrap (threading.py)", "heartbeat: the process's thread"),
    ("_observe (worker/store.py)", "metrics (observer, active gauge)"),
    ("(worker/metrics.py)", "metrics (observer, active gauge)"),
    ("(prometheus_client/", "metrics (observer, active gauge)"),
    ("(worker/run_trace.py)", "tracing (run_trace, traced_run)"),
    ("(shared/tracing.py)", "tracing (run_trace, traced_run)"),
    ("(logging/__init__.py)", "logging"),
    ("InputModel.arguments (shared/task_input.py)", "input validation"),
    ("settle_workflow (worker/workflow.py)", "workflow settle"),
    ("after_terminal (worker/webhooks.py)", "webhook check"),
    ("(celery/backends/", "Celery: result store"),
)
# Matched only when no frame of the stack matches a rule above (``retrying``, lambdas).
FALLBACK: tuple[tuple[str, str], ...] = (
    ("(worker/context.py)", "context (Context, close)"),
    ("(worker/runner.py)", "runner, other"),
)
CELERY = "Celery: trace, ack, the rest"
_LINE = re.compile(r":\d+\)$")
_PROCESS = re.compile(r"process (\d+):")


def _frames(stack: str) -> list[str]:
    return [_LINE.sub(")", f) for f in stack.split(";")]


def _pid(head: str) -> int:
    """The pid of a ``process 123:"argv"`` root frame, -1 for another frame."""
    m = _PROCESS.match(head)
    return int(m.group(1)) if m else -1


def split(path: Path) -> tuple[Counter[str], int, int]:
    """(pool samples by category, pool samples, main-process samples) of one py-spy file."""
    lines = path.read_text(errors="replace").splitlines()
    by: Counter[str] = Counter()
    pool = main_n = 0
    for line in lines:
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = _frames(stack)
        # A pool process's stacks start with its parent's frame, then its own.
        if len(frames) < 2 or _pid(frames[1]) < 0:
            main_n += count
            continue
        if not any("trace_task" in f or "Thread._bootstrap" in f for f in frames):
            continue  # the pool process starting (imports, fork), not running tasks
        pool += count
        by[_category(frames)] += count
    return by, pool, main_n


def _category(frames: list[str]) -> str:
    for rules in (RULES, FALLBACK):
        for frame in reversed(frames):
            hit = next((cat for pat, cat in rules if pat in frame), None)
            if hit is not None:
                return hit
    return CELERY


def report(taskgate: Path, plain: Path, n: int | None = None, rate_hz: float = 250.0) -> str:
    """A text table: per category, samples and microseconds per task (when ``n`` is given)."""
    tg, tg_pool, tg_main = split(taskgate)
    pl, pl_pool, pl_main = split(plain)
    us = (1e6 / rate_hz / n) if n else None

    def cell(samples: int) -> str:
        return f"{samples}" + (f" ({samples * us:,.0f} us/task)" if us else "")

    out = [
        f"P8 profile (py-spy, non-idle samples at {rate_hz:g} Hz"
        + (f", {n} tasks each; us/task sums both pool processes)" if n else ")"),
        f"- worker main process: taskgate {cell(tg_main)}, plain {cell(pl_main)}",
        f"- pool processes running tasks: taskgate {cell(tg_pool)}, plain {cell(pl_pool)}",
        "- taskgate pool samples by step:",
    ]
    for category, samples in tg.most_common():
        out.append(f"  - {category}: {cell(samples)}, {100 * samples / max(tg_pool, 1):.1f}%")
    out.append("- plain Celery pool samples by step:")
    for category, samples in pl.most_common():
        out.append(f"  - {category}: {cell(samples)}, {100 * samples / max(pl_pool, 1):.1f}%")
    return "\n".join(out)


if __name__ == "__main__":
    print(report(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]) if sys.argv[3:] else None))
