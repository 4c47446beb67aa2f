"""The Ray side of ``engine="ray"``: what runs inside the Ray worker processes.

The Celery worker that took the task (``worker.ray_engine``) starts ``run_body`` as one Ray
task; the task's function runs in that Ray worker's main thread with a ``RayContext`` as its
``ctx``. Its progress goes to a ``ProgressHub``, a small actor (no CPU) that each Celery pool
process keeps for all its Ray tasks: ``ctx.progress`` sends it an update at most every
``PROGRESS_INTERVAL_S`` (the latest winning; 100 % and the last one are never held back), and
the Celery side takes the latest from it while it waits, turning each into its own
``ctx.progress`` (worker/context.py: seq, monotonic percent, coalescing, cancel). So Ray adds
no second way of writing the record, and nothing here needs Redis.
The hub's per-run state is bounded (runs untouched for long, and the oldest beyond a cap, are
forgotten), and a cancel check that the hub does not answer in time is "not cancelled yet".

``ctx.map(fn, items)`` runs ``fn(part_ctx, item)`` as one Ray task per item (``run_part``),
the first in the body's own Ray task while the others run;
the hub rolls their progress up into the body's (the mean of the parts' percents, with how many
are done) and the results come back in the items' order. The body waits for them in a blocking
``ray.wait``, during which Ray lends its CPU to the parts. A part that fails cancels the others
and fails the body with its error.

A cancel is Ray's: ``ray.cancel`` interrupts the body (KeyboardInterrupt, raised here as
``TaskCancelled``) and its parts, and a forced one ends their processes.

Only ``worker.ray_engine`` imports this module, and only in a worker that runs a Ray task (and
in the Ray workers): it imports ``ray``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayTaskError

from shared.errors import RetryRequested, TaskCancelled
from shared.registry import get_task, load_task_modules

# At most one progress update per this many seconds goes from a Ray task to the hub.
PROGRESS_INTERVAL_S = 0.05
# How stale ``ctx.cancelled`` may be (it asks the hub).
_CANCEL_POLL_S = 0.25
# How long a cancel check waits for the hub's answer. Unanswered, the task is not cancelled yet
# (``ray.cancel`` reaches it anyway), and later checks do not wait again until the hub answers.
_CANCEL_TIMEOUT_S = 1.0
# The hub forgets a run untouched this long, and keeps at most this many runs.
HUB_RUN_MAX_AGE_S = 600.0
HUB_MAX_RUNS = 10_000
# (map number, part index, parts): which part of which map of the body an update is from.
Part = tuple[int, int, int]
Update = tuple[float, str | None, dict[str, Any]]


class ProgressHub:
    """Holds the latest progress of each run (body and map parts) until the Celery side takes
    it, and the runs' cancel flags. One per Celery pool process (its driver).

    Every call touches its run; a run not touched for ``max_age_s`` (its driver died before
    ``forget``, or a part reported after it) is forgotten at the next call, and of more than
    ``max_runs`` runs the least recently touched go. A live run is touched all along: its
    driver polls ``take`` every few tenths of a second."""

    def __init__(self, max_age_s: float = HUB_RUN_MAX_AGE_S, max_runs: int = HUB_MAX_RUNS) -> None:
        self._max_age_s = max_age_s
        self._max_runs = max(1, max_runs)
        self._latest: dict[str, Update] = {}
        self._parts: dict[str, dict[int, list[float]]] = {}
        self._cancelled: set[str] = set()
        # Each run's last touch (monotonic), least recently touched first.
        self._touched: dict[str, float] = {}

    def _touch(self, run: str) -> None:
        self._touched.pop(run, None)
        self._touched[run] = time.monotonic()
        self._sweep()

    def _sweep(self) -> None:
        cutoff = time.monotonic() - self._max_age_s
        while self._touched:
            run, at = next(iter(self._touched.items()))
            if at >= cutoff and len(self._touched) <= self._max_runs:
                return
            self._drop(run)

    def _drop(self, run: str) -> None:
        self._touched.pop(run, None)
        self._latest.pop(run, None)
        self._parts.pop(run, None)
        self._cancelled.discard(run)

    def report(self, run: str, part: Part | None, pct: float, message: Any, data: Any) -> None:
        self._touch(run)
        if part is None:
            self._latest[run] = (pct, message, data)
            return
        number, index, count = part
        percents = self._parts.setdefault(run, {}).setdefault(number, [0.0] * count)
        percents[index] = max(percents[index], pct)
        done = sum(1 for p in percents if p >= 100.0)
        self._latest[run] = (
            sum(percents) / count,
            f"{done} of {count} parts done",
            {"parts": count, "parts_done": done},
        )

    def take(self, run: str) -> Update | None:
        self._touch(run)
        return self._latest.pop(run, None)

    def cancel(self, run: str) -> None:
        self._touch(run)
        self._cancelled.add(run)

    def cancelled(self, run: str) -> bool:
        self._touch(run)
        return run in self._cancelled

    def forget(self, run: str) -> None:
        self._drop(run)
        self._sweep()

    def runs(self) -> list[str]:
        """The runs held, least recently touched first (to look at the hub)."""
        self._sweep()
        return list(self._touched)


class RayContext:
    """``ctx`` of a task body (or of one part of a ``map``) running inside Ray.

    ``progress`` clamps to 0-100 and raises ``TaskCancelled`` once the task was cancelled;
    ``cancelled``, ``attempt``, ``owner``, ``task_id``, ``parent_result`` and ``retry`` are as in
    worker/context.py. ``start`` (child tasks) is refused: start them from a task on the Celery
    engine."""

    def __init__(
        self,
        info: Mapping[str, Any],
        hub: Any,
        options: Mapping[str, Any],
        part: Part | None = None,
        siblings: list[Any] | None = None,
    ) -> None:
        self.task_id: str = info["task_id"]
        self.parent_result: Any = info.get("parent_result")
        self._info = dict(info)
        self._run: str = info["run"]
        self._hub = hub
        self._options = dict(options)
        self._part = part
        self._maps = 0
        self._next_at = 0.0
        self._pending: Update | None = None
        self._cancel = False
        self._cancel_checked = time.monotonic()
        self._cancel_ask: Any = None  # a cancel check the hub has not answered yet
        # The first part of a map runs in the body's own worker beside the others (Ray tasks):
        # each poll also looks at them, so that one lost or failed is seen while this part runs
        # (at its next progress or cancel check), not only after it.
        self._siblings = list(siblings or ())

    def progress(self, percent: float, message: str | None = None, **data: Any) -> None:
        pct = float(percent)
        if not math.isfinite(pct):
            raise ValueError("percent must be a finite number")
        pct = min(100.0, max(0.0, pct))
        self.raise_if_cancelled()
        now = time.monotonic()
        if pct < 100.0 and now < self._next_at:
            self._pending = (pct, message, data)
            return
        self._send((pct, message, data), now)

    def _send(self, update: Update, now: float) -> None:
        self._pending = None
        self._next_at = now + PROGRESS_INTERVAL_S
        self._hub.report.remote(self._run, self._part, *update)

    def flush(self) -> None:
        """Send the update held back, if any (before the end)."""
        if self._pending is not None:
            self._send(self._pending, time.monotonic())

    @property
    def cancelled(self) -> bool:
        if not self._cancel and time.monotonic() - self._cancel_checked > _CANCEL_POLL_S:
            self._cancel = self._ask_cancelled()
            self._cancel_checked = time.monotonic()
            self._check_siblings()
        return self._cancel

    def _ask_cancelled(self) -> bool:
        """The hub's cancel flag of this run; False while the hub does not answer (a slow or
        hung hub): at most ``_CANCEL_TIMEOUT_S`` for a new question, not at all for one still
        unanswered (asked again, it is one question in flight, not one more each time)."""
        wait = 0.0
        if self._cancel_ask is None:
            self._cancel_ask = self._hub.cancelled.remote(self._run)
            wait = _CANCEL_TIMEOUT_S
        try:
            answer = ray.get(self._cancel_ask, timeout=wait)
        except GetTimeoutError:
            return False
        self._cancel_ask = None
        return bool(answer)

    def _check_siblings(self) -> None:
        """Raise a sibling part's error (or Ray's, for one whose worker died), if one ended so."""
        if not self._siblings:
            return
        done, self._siblings = ray.wait(self._siblings, num_returns=len(self._siblings), timeout=0)
        for ref in done:
            ray.get(ref)

    def raise_if_cancelled(self) -> None:
        if self.cancelled:
            raise TaskCancelled("cancelled by request")

    @property
    def attempt(self) -> int:
        return int(self._info["attempt"])

    @property
    def owner(self) -> str:
        return str(self._info["owner"])

    def retry(self, countdown: float | None = None, exc: BaseException | None = None) -> None:
        raise RetryRequested(countdown, exc)

    def start(self, task: Any, /, **input: Any) -> Any:
        raise NotImplementedError(
            "ctx.start is not available inside a Ray task: start child tasks from a task on "
            "the Celery engine"
        )

    def map(self, fn: Callable[[Any, Any], Any], items: Iterable[Any]) -> list[Any]:
        """``fn(part_ctx, item)`` for each item, each a Ray task of its own (this task's
        ``ray_options``), in parallel; the results in the items' order."""
        work = list(items)
        if not work:
            return []
        self.flush()
        self._maps += 1
        number, count = self._maps, len(work)
        part = _part_remote.options(**self._options)
        # Parts 2..n are Ray tasks; this task's own worker runs the first meanwhile (its CPU
        # works instead of waiting, and the cluster keeps one worker process fewer busy).
        refs = [
            part.remote(fn, item, self._info, self._hub, (number, i, count), self._options)
            for i, item in enumerate(work[1:], start=1)
        ]
        waiting = list(refs)
        try:
            first = run_part(
                fn, work[0], self._info, self._hub, (number, 0, count), self._options, refs
            )
            while waiting:
                # Blocking (no timeout): Ray lends this task's CPU to the parts meanwhile.
                ready, waiting = ray.wait(waiting, num_returns=1)
                ray.get(ready)  # a part's error, at once
        except RayTaskError as exc:
            _cancel_all(waiting)
            cause = exc.cause  # the part's own error (a Ray system error stays Ray's)
            raise cause if isinstance(cause, BaseException) else exc from None
        except BaseException:
            _cancel_all(waiting)
            raise
        return [first, *ray.get(refs)]


def _cancel_all(refs: list[Any]) -> None:
    for ref in refs:
        with contextlib.suppress(Exception):  # already ended
            ray.cancel(ref, force=True)


def _call(ctx: RayContext, fn: Callable[[RayContext], Any]) -> Any:
    try:
        result = fn(ctx)
    except KeyboardInterrupt:  # ray.cancel, not forced
        raise TaskCancelled("cancelled by request") from None
    ctx.flush()
    return result


def run_body(
    name: str,
    modules: list[str],
    data: dict[str, Any],
    info: Mapping[str, Any],
    hub: Any,
    options: Mapping[str, Any],
) -> Any:
    """The Ray task of a task body: imports the task modules, runs ``name``'s function."""
    load_task_modules(modules)
    fn = get_task(name).fn
    return _call(RayContext(info, hub, options), lambda ctx: fn(ctx, **data))


def run_part(
    fn: Callable[[Any, Any], Any],
    item: Any,
    info: Mapping[str, Any],
    hub: Any,
    part: Part,
    options: Mapping[str, Any],
    siblings: list[Any] | None = None,
) -> Any:
    """The Ray task of one part of a ``map`` (or the first part, run in the body's own worker,
    which watches ``siblings``, the others); reports 100 % when done (the hub counts it)."""
    ctx = RayContext(info, hub, options, part, siblings)
    result = _call(ctx, lambda c: fn(c, item))
    hub.report.remote(info["run"], part, 100.0, None, {})
    return result


# Ray's own retries are off: a lost Ray worker is retried by the task's retry policy (the
# Celery side), from the start of the body.
body_remote = ray.remote(max_retries=0)(run_body)
_part_remote = ray.remote(max_retries=0)(run_part)
hub_actor = ray.remote(num_cpus=0, max_restarts=0)(ProgressHub)
