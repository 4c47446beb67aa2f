"""The demo tasks shipped with taskgate (see the README's table)."""

from __future__ import annotations

import math
import time
from typing import Any

from shared.inputs import Field, InputSchema
from shared.registry import TaskContext, task


class DemoFailure(Exception):
    """The error ``demo.fail`` raises on purpose."""


@task(
    "demo.count",
    queue="fast",
    queues=("heavy",),
    schema=InputSchema(
        {
            "steps": Field("int", default=10, low=1, high=10000),
            "delay": Field("float", default=0.1, low=0, high=10),
        }
    ),
)
def count(ctx: TaskContext, steps: int, delay: float) -> dict[str, Any]:
    """Reports progress at each step; returns how many steps it counted."""
    for i in range(1, steps + 1):
        if delay:
            time.sleep(delay)
        ctx.progress(100.0 * i / steps, f"step {i} of {steps}", step=i)
    return {"counted": steps}


@task(
    "demo.fail",
    queue="fast",
    schema=InputSchema(
        {
            "message": Field("str", default="demo failure", max_length=1000),
            "after": Field("int", default=0, low=0, high=10000),
        }
    ),
)
def fail(ctx: TaskContext, message: str, after: int) -> None:
    """Fails with ``message`` after ``after`` steps."""
    for i in range(1, after + 1):
        time.sleep(0.05)
        ctx.progress(100.0 * i / (after + 1), f"step {i} of {after}")
    raise DemoFailure(message)


@task(
    "demo.sleep",
    queue="fast",
    queues=("heavy",),
    schema=InputSchema({"seconds": Field("float", default=5.0, low=0, high=3600)}),
)
def sleep(ctx: TaskContext, seconds: float) -> dict[str, Any]:
    """Sleeps with progress; stops early when cancelled."""
    start = time.monotonic()
    tick = min(0.5, max(0.05, seconds / 100))
    while (elapsed := time.monotonic() - start) < seconds:
        time.sleep(min(tick, seconds - elapsed))
        elapsed = time.monotonic() - start
        ctx.progress(min(100.0, 100.0 * elapsed / seconds), f"{elapsed:.1f}s of {seconds:g}s")
    return {"slept": seconds}


@task(
    "demo.add",
    queue="fast",
    schema=InputSchema({"value": Field("float", default=0.0, low=-1e12, high=1e12)}),
)
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


@task(
    "demo.primes",
    queue="heavy",
    schema=InputSchema({"limit": Field("int", default=1_000_000, low=2, high=50_000_000)}),
)
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


@task(
    "demo.flaky",
    queue="fast",
    schema=InputSchema({"fail_times": Field("int", default=2, low=0, high=10)}),
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
