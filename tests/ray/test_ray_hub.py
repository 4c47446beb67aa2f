"""The progress hub (worker/ray_side.py ``ProgressHub``) on a real local Ray: its per-run state
is bounded, and a hub that does not answer (its process stopped with SIGSTOP) neither hangs the
driver (worker/ray_engine.py ``invoke_ray``, run here in this test process, connected to the
module's head) nor the body in Ray; such a hub is replaced for the next run."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any, cast

import pytest

pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'taskgate[ray]')")

from shared.errors import TaskCancelled
from shared.registry import get_task, load_task_modules
from tests.ray.conftest import RAY_TASKS, RayHead, free_cpus
from worker import ray_engine, ray_side

pytestmark = pytest.mark.timeout(90)


def hub_pid(ray: Any, hub: Any) -> int:
    return int(ray.get(hub.__ray_call__.remote(lambda _self: os.getpid()), timeout=30))


@contextlib.contextmanager
def hung(pid: int) -> Iterator[None]:
    """The hub's process stopped (SIGSTOP): calls to it queue and are not answered."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


class DriverCtx:
    """What ``invoke_ray`` uses of the Celery side's ``ctx`` (worker/context.py): the run's
    identity, ``progress`` (recorded here) and ``raise_if_cancelled`` (cancelled from
    ``cancel_after`` seconds on, as a cancel request would)."""

    def __init__(self, cancel_after: float | None = None) -> None:
        self.task_id = f"t-{uuid.uuid4().hex[:8]}"
        self.attempt = 1
        self.owner = "ray-hub-test"
        self.parent_result: Any = None
        self.updates: list[float] = []
        self._cancel_at = None if cancel_after is None else time.monotonic() + cancel_after

    def progress(self, percent: float, message: str | None = None, **data: Any) -> None:
        self.updates.append(percent)
        self.raise_if_cancelled()

    def raise_if_cancelled(self) -> None:
        if self._cancel_at is not None and time.monotonic() >= self._cancel_at:
            raise TaskCancelled("cancelled by request")


def run_waits(ctx: DriverCtx, seconds: float) -> Any:
    """``tray.waits`` run by ``invoke_ray`` as the Celery side would: it reports (and so checks
    its cancel flag at the hub) every 0.1 s for ``seconds``."""
    data = {"seconds": seconds, "pid_dir": None}
    return ray_engine.invoke_ray(get_task("tray.waits"), cast(Any, ctx), data)


@pytest.fixture
def driver(ray_driver: Any, ray_head: RayHead, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``ray``, with ``worker.ray_engine`` in this process as a Celery pool process has it (its
    own hub, made on first use), connected to the module's head."""
    monkeypatch.setenv(ray_engine.ADDRESS_ENV, ray_head.address)
    for key, value in ray_head.env.items():
        if key.startswith("TASKGATE_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("TASKGATE_TASK_MODULES", RAY_TASKS)
    monkeypatch.setenv(ray_engine.GRACE_ENV, "1")
    monkeypatch.setattr(ray_engine, "_connected", None)
    monkeypatch.setattr(ray_engine, "_hub", None)
    load_task_modules(RAY_TASKS.split(","))
    yield ray_driver


def test_a_hung_hub_neither_hangs_the_driver_nor_the_body_and_is_replaced(
    driver: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    patience = ray_engine.HUB_LOST_S
    monkeypatch.setattr(ray_engine, "HUB_LOST_S", 1.0)
    ray = driver
    hub = ray_engine.progress_hub(ray)
    pid = hub_pid(ray, hub)
    ctx = DriverCtx()
    with hung(pid):
        began = time.monotonic()
        result = run_waits(ctx, 3.0)
        took = time.monotonic() - began
    assert result == {"waited": 3.0}
    assert took < 20, took
    assert ctx.updates == []  # the hub never answered the driver
    assert ray_engine._hub is None  # silent past HUB_LOST_S: lost

    # The next run makes a new hub, and its progress comes through it. With the usual
    # patience: a new hub's first answer waits for Ray to start its process, which took over
    # 1 s on a busy machine (the new hub was then dropped too, and the run had no progress).
    monkeypatch.setattr(ray_engine, "HUB_LOST_S", patience)
    ctx = DriverCtx()
    result = run_waits(ctx, 3.0)
    assert result == {"waited": 3.0}
    assert ctx.updates, "no progress through the new hub"
    assert ray_engine._hub is not None and ray_engine._hub is not hub
    assert hub_pid(ray, ray_engine._hub) != pid


def test_a_cancel_is_honoured_while_the_hub_is_hung(driver: Any) -> None:
    ray = driver
    hub = ray_engine.progress_hub(ray)
    ctx = DriverCtx(cancel_after=2.0)
    with hung(hub_pid(ray, hub)):
        began = time.monotonic()
        with pytest.raises(TaskCancelled):
            run_waits(ctx, 60.0)
        took = time.monotonic() - began
        assert took < 10, took  # cancel seen at once, the Ray work stopped within its grace
        # The body's Ray task was stopped, though the hub never saw the cancel.
        deadline = time.monotonic() + 20
        while free_cpus(ray) != 2.0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert free_cpus(ray) == 2.0
    assert ray_engine._hub is hub  # silent for less than HUB_LOST_S: kept


def test_the_hub_forgets_runs_left_untouched(ray_driver: Any) -> None:
    ray = ray_driver
    hub = ray_side.hub_actor.remote(max_age_s=1.0, max_runs=100)
    # A driver that died before ``forget``: its run's update, cancel flag and parts stay...
    ray.get(
        [
            hub.report.remote("dead", None, 10.0, "m", {}),
            hub.cancel.remote("dead"),
            hub.report.remote("dead", (1, 0, 2), 50.0, None, {}),
            hub.report.remote("live", None, 5.0, None, {}),
        ],
        timeout=30,
    )
    assert ray.get(hub.runs.remote(), timeout=30) == ["dead", "live"]
    # ...while a live run's driver keeps polling it.
    end = time.monotonic() + 1.6
    while time.monotonic() < end:
        ray.get(hub.take.remote("live"), timeout=30)
        time.sleep(0.1)
    assert ray.get(hub.runs.remote(), timeout=30) == ["live"]
    assert ray.get(hub.cancelled.remote("dead"), timeout=30) is False
    assert ray.get(hub.take.remote("dead"), timeout=30) is None
    ray.get(hub.forget.remote("dead"), timeout=30)
    ray.get(hub.forget.remote("live"), timeout=30)
    assert ray.get(hub.runs.remote(), timeout=30) == []
    ray.kill(hub)


def test_the_hub_keeps_at_most_max_runs_the_least_recently_touched_go(ray_driver: Any) -> None:
    ray = ray_driver
    hub = ray_side.hub_actor.remote(max_age_s=600.0, max_runs=3)
    for i in range(5):
        ray.get(hub.report.remote(f"r{i}", None, float(i), None, {}), timeout=30)
    ray.get(hub.cancel.remote("r2"), timeout=30)  # touched: now the most recent
    assert ray.get(hub.runs.remote(), timeout=30) == ["r3", "r4", "r2"]
    assert ray.get(hub.take.remote("r4"), timeout=30) == (4.0, None, {})
    assert ray.get(hub.cancelled.remote("r2"), timeout=30) is True
    # r0 was dropped whole: asked again, it is a new run with nothing held.
    assert ray.get(hub.take.remote("r0"), timeout=30) is None
    assert ray.get(hub.runs.remote(), timeout=30) == ["r4", "r2", "r0"]
    ray.kill(hub)
