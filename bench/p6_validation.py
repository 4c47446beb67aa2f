"""P6: what checking a submit's input costs, pydantic (today's ``shared.task_input``) against the
hand-written validator it replaced (``bench.legacy_inputs``), in one run, same process.

Three rows per validator where both can say it: ``demo.count``'s input (two numbers), the same
with one bad field (the 422 path), and a whole submit body through ``parse_submission`` (the
gateway's parser, with pydantic). ``demo.report``'s nested, list and enum input has no legacy
equivalent; its cost is reported alone. Each figure is the best of ``ROUNDS`` runs of ``N``
calls: microseconds per call (lower is better), ratios pydantic / legacy.

``python -m bench --only p6`` or ``python -m bench.p6_validation``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bench.harness import Results
from bench.legacy_inputs import Field, InputSchema
from shared.errors import InvalidInput

N = 20_000
ROUNDS = 5

COUNT = {"steps": 50, "delay": 0.1}
COUNT_BAD = {"steps": 50, "delay": 99}
REPORT = {"rows": 500, "columns": ["id", "name", "size"], "options": {"format": "csv"}}

LEGACY_COUNT = InputSchema(
    {
        "steps": Field("int", default=10, low=1, high=10000),
        "delay": Field("float", default=0.1, low=0, high=10),
    }
)


def per_call_us(fn: Callable[[], Any]) -> float:
    """Best of ``ROUNDS`` rounds of ``N`` calls, microseconds per call."""
    best = float("inf")
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        for _ in range(N):
            fn()
        best = min(best, time.perf_counter() - t0)
    return best / N * 1e6


def refusing(check: Callable[[Any], Any], data: Any) -> Callable[[], None]:
    def call() -> None:
        try:
            check(data)
        except InvalidInput:
            return
        raise AssertionError("accepted a bad input")

    return call


def run(results: Results) -> None:
    import worker.demo  # noqa: F401  (registers the demo tasks)
    from gateway.tasks.submission import parse_submission
    from shared.registry import get_task

    model = get_task("demo.count").schema
    report = get_task("demo.report").schema
    assert model.validate(COUNT) == LEGACY_COUNT.validate(COUNT)
    rows = {
        "valid input (demo.count)": (
            per_call_us(lambda: model.validate(COUNT)),
            per_call_us(lambda: LEGACY_COUNT.validate(COUNT)),
        ),
        "refused input, 422 (demo.count)": (
            per_call_us(refusing(model.validate, COUNT_BAD)),
            per_call_us(refusing(LEGACY_COUNT.validate, COUNT_BAD)),
        ),
    }
    for metric, (new, old) in rows.items():
        results.add("P6", "pydantic (shared.task_input)", metric, round(new, 2), "us/call")
        results.add("P6", "hand-written (legacy)", metric, round(old, 2), "us/call")
        results.ratio("P6", f"pydantic / legacy, {metric}", new, old, note="cost; lower is better")
    body = {"task": "demo.count", "input": COUNT, "priority": 5}
    whole = per_call_us(lambda: parse_submission(body))
    results.add("P6", "pydantic (shared.task_input)", "whole submit body (parse_submission)",
                round(whole, 2), "us/call")  # fmt: skip
    results.add("P6", "pydantic (shared.task_input)", "valid nested input (demo.report)",
                round(per_call_us(lambda: report.validate(REPORT)), 2), "us/call")  # fmt: skip


def main() -> None:
    from bench.harness import render_table

    results = Results()
    run(results)
    print(render_table(results))


if __name__ == "__main__":
    main()
