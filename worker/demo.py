"""The demo tasks shipped with taskgate (see the README's table)."""

from __future__ import annotations

import csv
import io
import math
import time
from enum import StrEnum
from typing import Annotated, Any

import orjson
from pydantic import Field

from shared.registry import RayTaskContext, TaskContext, task
from shared.task_input import TaskInput


class DemoFailure(Exception):
    """The error ``demo.fail`` raises on purpose."""


class CountInput(TaskInput):
    steps: int = Field(10, ge=1, le=10000, description="How many steps to count")
    delay: float = Field(0.1, ge=0, le=10, description="Seconds to wait at each step")


@task(
    "demo.count",
    queue="fast",
    queues=("heavy",),
    schema=CountInput,
)
def count(ctx: TaskContext, steps: int, delay: float) -> dict[str, Any]:
    """Reports progress at each step; returns how many steps it counted."""
    for i in range(1, steps + 1):
        if delay:
            time.sleep(delay)
        ctx.progress(100.0 * i / steps, f"step {i} of {steps}", step=i)
    return {"counted": steps}


class FailInput(TaskInput):
    message: str = Field("demo failure", max_length=1000, description="The error message")
    after: int = Field(0, ge=0, le=10000, description="Steps to run before failing")


@task("demo.fail", queue="fast", schema=FailInput)
def fail(ctx: TaskContext, message: str, after: int) -> None:
    """Fails with ``message`` after ``after`` steps."""
    for i in range(1, after + 1):
        time.sleep(0.05)
        ctx.progress(100.0 * i / (after + 1), f"step {i} of {after}")
    raise DemoFailure(message)


class SleepInput(TaskInput):
    seconds: float = Field(5.0, ge=0, le=3600, description="How long to sleep")


@task("demo.sleep", queue="fast", queues=("heavy",), schema=SleepInput)
def sleep(ctx: TaskContext, seconds: float) -> dict[str, Any]:
    """Sleeps with progress; stops early when cancelled."""
    start = time.monotonic()
    tick = min(0.5, max(0.05, seconds / 100))
    while (elapsed := time.monotonic() - start) < seconds:
        time.sleep(min(tick, seconds - elapsed))
        elapsed = time.monotonic() - start
        ctx.progress(min(100.0, 100.0 * elapsed / seconds), f"{elapsed:.1f}s of {seconds:g}s")
    return {"slept": seconds}


class AddInput(TaskInput):
    value: float = Field(0.0, ge=-1e12, le=1e12, description="The number to add")


@task("demo.add", queue="fast", schema=AddInput)
def add(ctx: TaskContext, value: float) -> dict[str, Any]:
    """Adds ``value`` to the totals it is handed in a workflow (a chain's previous result, a
    chord's header results); shows results flowing through chain and chord."""
    before = ctx.parent_result
    parts = before if isinstance(before, list) else [before]
    total = value + sum(
        float(p["total"])
        for p in parts
        if isinstance(p, dict) and isinstance(p.get("total"), (int, float))
    )
    ctx.progress(100.0, f"total {total:g}")
    return {"total": total}


class PrimesInput(TaskInput):
    limit: int = Field(1_000_000, ge=2, le=50_000_000, description="Count the primes below this")


@task("demo.primes", queue="heavy", schema=PrimesInput)
def primes(ctx: TaskContext, limit: int) -> dict[str, Any]:
    """Counts the primes below ``limit`` with a segmented sieve (CPU-bound)."""
    root = math.isqrt(limit) + 1
    base = bytearray([1]) * (root + 1)
    base[0:2] = b"\x00\x00"
    for i in range(2, math.isqrt(root) + 1):
        if base[i]:
            base[i * i :: i] = bytes(len(range(i * i, root + 1, i)))
    small = [i for i in range(2, root + 1) if base[i]]
    segment = 1 << 20
    found = 0
    low = 0
    while low < limit:
        high = min(low + segment, limit)
        seg = bytearray([1]) * (high - low)
        for p in small:
            start = max(p * p, (low + p - 1) // p * p)
            if start >= high:
                if p * p >= high:
                    break
                continue
            seg[start - low :: p] = bytes(len(range(start, high, p)))
        if low == 0:
            seg[0 : min(2, high)] = bytes(min(2, high))
        found += seg.count(1)
        low = high
        ctx.progress(100.0 * low / limit, f"sieved {low:,} of {limit:,}", primes=found)
    return {"limit": limit, "primes": found}


class FlakyError(Exception):
    """The retryable error ``demo.flaky`` raises on its first attempts."""


class FlakyInput(TaskInput):
    fail_times: int = Field(2, ge=0, le=10, description="Attempts that fail before one succeeds")


@task(
    "demo.flaky",
    queue="fast",
    schema=FlakyInput,
    retry_for=(FlakyError,),
    max_retries=5,
    retry_backoff=0.5,
    retry_backoff_max=2.0,
)
def flaky(ctx: TaskContext, fail_times: int) -> dict[str, Any]:
    """Fails with a retryable error on its first ``fail_times`` attempts, then succeeds."""
    ctx.progress(50.0, f"attempt {ctx.attempt}")
    if ctx.attempt <= fail_times:
        raise FlakyError(f"attempt {ctx.attempt} of {fail_times + 1} fails on purpose")
    return {"attempts": ctx.attempt}


class ReportFormat(StrEnum):
    csv = "csv"
    json = "json"


class ReportOptions(TaskInput):
    format: ReportFormat = Field(description="csv or json")
    header: bool = Field(True, description="Start with a header line (csv)")


Column = Annotated[str, Field(min_length=1, max_length=64)]
# How many of the report's first lines the result carries (the report itself is not kept).
PREVIEW_LINES = 5


class ReportInput(TaskInput):
    rows: int = Field(ge=1, le=100_000, description="How many rows the report has")
    columns: list[Column] = Field(min_length=1, max_length=20, description="Column names")
    options: ReportOptions


@task("demo.report", queue="fast", schema=ReportInput)
def report(
    ctx: TaskContext, rows: int, columns: list[str], options: ReportOptions
) -> dict[str, Any]:
    """Builds a small report with progress; its input is nested, a list and an enum."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if options.format is ReportFormat.csv and options.header:
        writer.writerow(columns)
    chunk = max(1, rows // 20)
    for i in range(rows):
        values = [f"{name}-{i + 1}" for name in columns]
        if options.format is ReportFormat.csv:
            writer.writerow(values)
        else:
            out.write(orjson.dumps(dict(zip(columns, values, strict=True))).decode() + "\n")
        if (i + 1) % chunk == 0 or i + 1 == rows:
            ctx.progress(100.0 * (i + 1) / rows, f"row {i + 1:,} of {rows:,}")
    text = out.getvalue()
    return {
        "format": options.format.value,
        "rows": rows,
        "columns": columns,
        "bytes": len(text.encode()),
        "preview": text.splitlines()[:PREVIEW_LINES],
    }


class RayPrimesInput(TaskInput):
    limit: int = Field(10_000_000, ge=2, le=200_000_000, description="Count the primes below this")
    parts: int = Field(4, ge=1, le=64, description="Ray tasks to split the range over")


def _small_primes(upto: int) -> list[int]:
    """The primes up to ``upto`` (the sieving primes of a segment)."""
    base = bytearray([1]) * (upto + 1)
    base[0:2] = b"\x00\x00"
    for i in range(2, math.isqrt(upto) + 1):
        if base[i]:
            base[i * i :: i] = bytes(len(range(i * i, upto + 1, i)))
    return [i for i in range(2, upto + 1) if base[i]]


def sieve_range(ctx: TaskContext, bounds: tuple[int, int]) -> int:
    """How many primes lie in ``[low, high)``: one part of ``demo.ray_primes``, run as a Ray
    task of its own, with progress per 1 Mi numbers sieved."""
    low, high = bounds
    small = _small_primes(math.isqrt(max(high - 1, 1)) + 1)
    segment = 1 << 20
    found = 0
    start_low = low
    while low < high:
        top = min(low + segment, high)
        seg = bytearray([1]) * (top - low)
        for p in small:
            if p * p >= top:
                break
            first = max(p * p, (low + p - 1) // p * p)
            seg[first - low :: p] = bytes(len(range(first, top, p)))
        for n in range(low, min(2, top)):
            seg[n - low] = 0  # 0 and 1 are not primes
        found += seg.count(1)
        low = top
        ctx.progress(100.0 * (low - start_low) / (high - start_low), primes=found)
    return found


@task(
    "demo.ray_primes",
    queue="heavy",
    schema=RayPrimesInput,
    engine="ray",
    ray_options={"num_cpus": 1},
)
def ray_primes(ctx: RayTaskContext, limit: int, parts: int) -> dict[str, Any]:
    """Counts the primes below ``limit`` on Ray: the range split over ``parts`` Ray tasks
    (``ctx.map``), their progress rolled up into this task's."""
    step = -(-limit // parts)
    bounds = [(lo, min(lo + step, limit)) for lo in range(0, limit, step)]
    counts = ctx.map(sieve_range, bounds)
    return {"limit": limit, "parts": len(bounds), "primes": sum(counts)}
