"""docs/grafana-dashboard.json against the metrics that really exist, and the math that
scripts/dashboard.py draws its picture with (``scripts/dashboard_math.py``).

The families and their labels come from a real gateway's ``/metrics`` (the ``http`` fixture) and
a real worker's metrics server (a Celery worker started with ``TASKGATE_WORKER_METRICS_PORT`` and
``PROMETHEUS_MULTIPROC_DIR``), after a few tasks ran that touch every family a panel reads: a
count with a completion webhook, a flaky task that retries, a failure, and a Socket.IO client that
gets the updates. Every panel's query must be in the PromQL that ``dashboard_math`` reads, name
only sample names those scrapes have, group only by labels they carry (or ``instance``, which
Prometheus adds), match only label values that occur, and give a value on the two scrapes.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import sys
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from tests.support import (
    ROOT,
    WEBHOOK_ENV,
    CeleryWorker,
    RedisServer,
    SocketClient,
    auth,
    base_env,
    free_port,
    make_token,
    started,
)

DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}


def _load_math() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "taskgate_dashboard_math", ROOT / "scripts" / "dashboard_math.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


dm = _load_math()
# Read once, here: the test that runs tasks runs on the gateway's loop (no blocking reads there).
BOARD: dict[str, Any] = json.loads(DASHBOARD.read_text())


def queries() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in BOARD["panels"] for t in p["targets"]]


# --- the dashboard file -----------------------------------------------------------------------


def test_the_dashboard_is_an_importable_grafana_dashboard() -> None:
    board = BOARD
    assert board["schemaVersion"] >= 36
    assert [i["name"] for i in board["__inputs"]] == ["DS_PROMETHEUS"]
    assert board["__inputs"][0]["pluginId"] == "prometheus"
    titles = [p["title"] for p in board["panels"]]
    assert len(titles) == len(set(titles))
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        # Each says which question it answers.
        assert "?" in panel["description"], panel["title"]
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])}  # fmt: skip
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
    wanted = {
        "taskgate_task_executions_total", "taskgate_task_duration_seconds_bucket",
        "taskgate_task_queue_wait_seconds_bucket", "taskgate_delivery_lag_seconds_bucket",
        "taskgate_queue_depth", "taskgate_active_tasks",
        "taskgate_http_request_duration_seconds_bucket", "taskgate_event_loop_lag_seconds_bucket",
        "taskgate_task_retries_total", "taskgate_webhooks_total",
    }  # fmt: skip
    read = {s.metric for _, q in queries() for s in dm.selectors(dm.parse(q))}
    assert wanted <= read


# --- against real metrics ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(redis_server: RedisServer) -> dict[str, str]:
    return base_env(redis_server.url, f"tgd-{uuid.uuid4().hex[:8]}:", **WEBHOOK_ENV)


@pytest.fixture(scope="module")
def worker_metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def celery_worker(
    env: dict[str, str], log_dir: Path, worker_metrics_port: int
) -> Iterator[CeleryWorker]:
    files = log_dir / f"dashboard-metrics-{worker_metrics_port}"
    files.mkdir()
    worker_env = {
        **env,
        "TASKGATE_WORKER_METRICS_PORT": str(worker_metrics_port),
        "PROMETHEUS_MULTIPROC_DIR": str(files),
    }
    with started(CeleryWorker(worker_env, log_dir)) as worker:
        yield worker


def _sample(text: str, name: str) -> float:
    """The value of the unlabelled sample ``name`` in an exposition (0 if absent)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and not s.labels:
                return float(s.value)
    return 0.0


class Exposition:
    """What a set of scrapes shows: per sample name, its family's type and its labels' values."""

    def __init__(self, texts: list[str]) -> None:
        self.types: dict[str, str] = {}
        self.labels: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        for text in texts:
            for family in text_string_to_metric_families(text):
                for s in family.samples:
                    self.types[s.name] = family.type
                    for k, v in s.labels.items():
                        self.labels[s.name][k].add(v)


async def test_every_query_reads_real_families_and_labels_and_gives_values(
    http: TestClient,
    gateway: TestServer,
    celery_worker: CeleryWorker,
    worker_metrics_port: int,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> None:
    hooked = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        hooked.set()
        return web.Response(status=204)

    receiver_app = web.Application()
    receiver_app.router.add_post("/hook", hook)
    receiver = await aiohttp_server(receiver_app)
    user = f"dash-{uuid.uuid4().hex[:6]}"
    worker_url = f"http://127.0.0.1:{worker_metrics_port}/metrics"

    async with aiohttp.ClientSession() as session:

        async def scrape(at: float) -> tuple[Any, list[str]]:
            async with http.get("/metrics") as resp:
                assert resp.status == 200
                gateway_text = await resp.text()
            async with session.get(worker_url) as resp:
                assert resp.status == 200
                worker_text = await resp.text()
            snap = dm.Scrape(at=at)
            snap.add("gateway", gateway_text)
            snap.add("worker", worker_text)
            return snap, [gateway_text, worker_text]

        before, before_texts = await scrape(0.0)
        lag_before = _sample(before_texts[0], "taskgate_event_loop_lag_seconds_count")
        client = await SocketClient(str(gateway.make_url("")), make_token(user)).connect()
        bodies = [
            {"task": "demo.count", "input": {"steps": 3, "delay": 0.05},
             "callback_url": str(receiver.make_url("/hook"))},
            {"task": "demo.flaky", "input": {"fail_times": 1}},
            {"task": "demo.fail", "input": {"message": "on purpose"}},
        ]  # fmt: skip
        ids = []
        for body in bodies:
            async with http.post("/api/tasks", json=body, headers=auth(user)) as resp:
                assert resp.status == 202, await resp.text()
                ids.append((await resp.json())["task_id"])
        async with asyncio.timeout(60):
            for task_id in ids:
                await client.wait_terminal(task_id, timeout=60)
            await hooked.wait()
        # A websocket request is counted when it ends: the Socket.IO route's series appears.
        await client.close()
        async with asyncio.timeout(20):
            while True:
                after, texts = await scrape(10.0)
                seen = Exposition(texts)
                routes = seen.labels["taskgate_http_request_duration_seconds_count"]["route"]
                webhooks = seen.labels["taskgate_webhooks_total"]["outcome"]
                # The loop-lag watcher samples every 0.25 s: wait for one more sample too (on a
                # loaded machine the whole run can fit between two).
                lagged = _sample(texts[0], "taskgate_event_loop_lag_seconds_count") > lag_before
                if "/socket.io/" in routes and "delivered" in webhooks and lagged:
                    break
                await asyncio.sleep(0.1)

    for title, query in queries():
        expr = dm.parse(query)
        for sel in dm.selectors(expr):
            assert sel.metric in seen.types, f"{title}: {sel.metric} is on no /metrics"
            kind = seen.types[sel.metric]
            rated = any(isinstance(e, dm.Rate) for e in _walk(expr))
            if rated:
                assert kind in ("counter", "histogram"), f"{title}: rate() of a {kind}"
            else:
                assert kind == "gauge", f"{title}: {sel.metric} read as a gauge, is a {kind}"
            for label, _, value in sel.matchers:
                assert value in seen.labels[sel.metric][label], f"{title}: no {label}={value!r}"
        for sel, by in dm.groupings(expr):
            for label in by:
                if label == "le":
                    assert sel.metric.endswith("_bucket"), f"{title}: by le of {sel.metric}"
                    continue
                assert label in seen.labels[sel.metric] or label in dm.TARGET_LABELS, (
                    f"{title}: {sel.metric} has no label {label!r}"
                )
        result = dm.evaluate(expr, before, after)
        values = [v for v in result.values() if not math.isnan(v)]
        assert values, f"{title}: {query} gave nothing on a run that exercised it"


def _walk(expr: Any) -> Iterator[Any]:
    while True:
        yield expr
        if isinstance(expr, dm.Selector):
            return
        expr = expr.arg


# --- the math ---------------------------------------------------------------------------------

INF = math.inf
# Cumulative counts: 10 observations in (0, 1], 30 in (1, 2], 40 in (2, 4], 20 above 4.
BUCKETS = [(1.0, 10.0), (2.0, 40.0), (4.0, 80.0), (INF, 100.0)]


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.05, 0.5),  # rank 5 in the lowest bucket: from 0 to 1, halfway
        (0.1, 1.0),  # rank 10: the top of the lowest bucket
        (0.25, 1.5),  # rank 25: (25 - 10) / 30 of the way from 1 to 2
        (0.5, 2.5),  # rank 50: (50 - 40) / 40 of the way from 2 to 4
        (0.8, 4.0),  # rank 80: the top of the last finite bucket
        (0.99, 4.0),  # in the +Inf bucket: the highest finite bound
        (1.0, 4.0),
        (0.0, 0.0),  # rank 0: the lowest bucket, at its start
    ],
)
def test_histogram_quantile_interpolates_as_prometheus(q: float, expected: float) -> None:
    assert dm.histogram_quantile(q, BUCKETS) == pytest.approx(expected)
    # The order the buckets come in does not matter.
    assert dm.histogram_quantile(q, list(reversed(BUCKETS))) == pytest.approx(expected)


def test_histogram_quantile_special_cases() -> None:
    hq = dm.histogram_quantile
    assert math.isnan(hq(0.5, [(1.0, 0.0), (INF, 0.0)]))  # no observations
    assert math.isnan(hq(0.5, [(1.0, 3.0), (2.0, 5.0)]))  # no +Inf bucket
    assert math.isnan(hq(0.5, [(INF, 5.0)]))  # one bucket only
    assert math.isnan(hq(math.nan, BUCKETS))
    assert hq(-0.1, BUCKETS) == -INF
    assert hq(1.1, BUCKETS) == INF
    # A lowest bound at or below 0: that bound, not an interpolation from 0.
    assert hq(0.1, [(-1.0, 5.0), (1.0, 10.0), (INF, 10.0)]) == -1.0
    # Empty buckets skipped: rank 3 of 6 lands in (2, 4], the first whose count reaches 3.
    assert hq(0.5, [(1.0, 0.0), (2.0, 0.0), (4.0, 6.0), (INF, 6.0)]) == pytest.approx(3.0)
    # Counts that drop (inconsistent data) are lifted to the envelope: (2, 8) counts as (2, 10).
    assert hq(0.75, [(1.0, 10.0), (2.0, 8.0), (4.0, 20.0), (INF, 20.0)]) == pytest.approx(3.0)
    # Buckets of the same bound are added up (two series that lost their distinguishing label).
    same = [(1.0, 2.0), (1.0, 3.0), (2.0, 4.0), (2.0, 6.0), (INF, 4.0), (INF, 6.0)]
    assert hq(0.5, same) == pytest.approx(1.0)


def snapshot(at: float, texts: dict[str, str]) -> Any:
    s = dm.Scrape(at=at)
    for instance, text in texts.items():
        s.add(instance, text)
    return s


COUNTER = """# TYPE t_executions counter
t_executions_total{{task="a",status="COMPLETED"}} {a}
t_executions_total{{task="b",status="FAILED"}} {b}
"""
HIST = """# TYPE t_seconds histogram
t_seconds_bucket{{task="a",le="1.0"}} {one}
t_seconds_bucket{{task="a",le="2.0"}} {two}
t_seconds_bucket{{task="a",le="+Inf"}} {inf}
t_seconds_count{{task="a"}} {inf}
t_seconds_sum{{task="a"}} 0
"""


def test_rates_sum_across_targets_count_resets_and_new_series() -> None:
    prev = snapshot(0.0, {"w1": COUNTER.format(a=10, b=4), "w2": "# TYPE x gauge\nx 1\n"})
    cur = snapshot(10.0, {"w1": COUNTER.format(a=30, b=2), "w2": COUNTER.format(a=5, b=0)})
    by_task = dm.evaluate(dm.parse("sum by (task) (rate(t_executions_total[5m]))"), prev, cur)
    # w1: a +20; b dropped from 4 to 2, a restart: +2. w2: a series born since: +5, +0.
    assert by_task == {(("task", "a"),): pytest.approx(2.5), (("task", "b"),): pytest.approx(0.2)}
    total = dm.evaluate(dm.parse("sum(rate(t_executions_total[5m]))"), prev, cur)
    assert total == {(): pytest.approx(2.7)}
    matched = dm.evaluate(dm.parse('sum(rate(t_executions_total{task!="a"}[5m]))'), prev, cur)
    assert matched == {(): pytest.approx(0.2)}
    # A target that did not answer the earlier scrape gives no rate (not its whole count).
    gone = snapshot(0.0, {"w1": COUNTER.format(a=10, b=4)})
    assert dm.evaluate(dm.parse("sum(rate(t_executions_total[5m]))"), gone, cur) == {
        (): pytest.approx(2.2)
    }


def test_quantiles_come_from_bucket_increases_summed_over_targets() -> None:
    prev = snapshot(
        0.0, {"w1": HIST.format(one=100, two=100, inf=100), "w2": HIST.format(one=0, two=0, inf=0)}
    )
    cur = snapshot(
        5.0, {"w1": HIST.format(one=104, two=108, inf=110), "w2": HIST.format(one=0, two=2, inf=10)}
    )
    # Increases: (1: 4, 2: 10, +Inf: 20); the median, rank 10, is the top of (1, 2].
    expr = dm.parse("histogram_quantile(0.5, sum by (le, task) (rate(t_seconds_bucket[5m])))")
    assert dm.evaluate(expr, prev, cur) == {(("task", "a"),): pytest.approx(2.0)}
    # Rank 7 of 20: (7 - 4) / 6 of the way from 1 to 2.
    expr = dm.parse("histogram_quantile(0.35, sum by (le) (rate(t_seconds_bucket[5m])))")
    assert dm.evaluate(expr, prev, cur) == {(): pytest.approx(1.5)}
    # By instance, as Prometheus labels each target: w1's median, rank 5 of 10, is in (1, 2].
    expr = dm.parse("histogram_quantile(0.5, sum by (le, instance) (rate(t_seconds_bucket[5m])))")
    result = dm.evaluate(expr, prev, cur)
    assert result[(("instance", "w1"),)] == pytest.approx(1.25)
    assert result[(("instance", "w2"),)] == pytest.approx(2.0)  # in +Inf: the top finite bound


def test_gauges_aggregate_and_legends_format() -> None:
    text = '# TYPE depth gauge\ndepth{queue="fast"} 3\ndepth{queue="heavy"} 1\n'
    cur = snapshot(0.0, {"g1": text, "g2": text})
    # Every gateway reports the same queues: max, not sum.
    assert dm.evaluate(dm.parse("max by (queue) (depth)"), cur, cur) == {
        (("queue", "fast"),): 3.0, (("queue", "heavy"),): 1.0,
    }  # fmt: skip
    assert dm.evaluate(dm.parse("sum by (queue) (depth)"), cur, cur)[(("queue", "fast"),)] == 6.0
    assert dm.legend("{{queue}}", (("queue", "fast"),)) == "fast"
    assert dm.legend("p99", ()) == "p99"


@pytest.mark.parametrize(
    "query",
    [
        "rate(x_total)",  # no range
        "x_total[5m]",  # a range outside rate()
        "avg by (task) (x)",  # outside the subset
        "sum by (task) (rate(x_total[5m])) / 2",
        'x{task=~"a.*"}',
    ],
)
def test_queries_outside_the_subset_are_refused(query: str) -> None:
    with pytest.raises(dm.PromQLError):
        dm.parse(query)
