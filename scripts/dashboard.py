"""docs/dashboard.png: the Grafana dashboard's panels, drawn from a real run on loopback.

    .venv/bin/python scripts/dashboard.py            # the run (about 80 s), then the picture
    .venv/bin/python scripts/dashboard.py --render   # the picture again, from the saved data

The run: ``taskgate up`` in a temp data folder on free ports (the gateway on ``TASKGATE_PORT``,
the two workers' metrics on ``TASKGATE_WORKER_METRICS_PORT`` and the next port), a Socket.IO
client connected as the demo user (so the delivery-lag histogram has samples), a webhook
receiver on loopback that turns some calls away, and a mixed load over HTTP for ``LOAD_S``
seconds: demo.count, demo.report, demo.fail, demo.flaky, demo.sleep (some cancelled while they
run, some while held by a countdown), with bursts that fill the queues. The gateway's and both
workers' ``/metrics`` are scraped every ``SCRAPE_S`` seconds and parsed with prometheus-client's
parser.

Each panel's queries are read from docs/grafana-dashboard.json and evaluated on those scrapes by
``dashboard_math`` (rates from counter deltas, ``histogram_quantile`` from bucket deltas, over
``WINDOW`` scrapes), written to docs/dashboard-data.json, drawn with Chart.js (web/node_modules)
on a static page laid out like the dashboard, and saved by headless chromium (playwright-core)
as docs/dashboard.png. Every process started here is stopped by its pid at the end, on errors
too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import dashboard_math as dm
import socketio
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_JSON = ROOT / "docs" / "grafana-dashboard.json"
DATA_JSON = ROOT / "docs" / "dashboard-data.json"
PNG = ROOT / "docs" / "dashboard.png"
WEB = ROOT / "web"
CHROMIUM = os.environ.get("TASKGATE_CHROMIUM", "/usr/bin/chromium")
VIEWPORT = (1600, 1000)
LOAD_S = 60.0
SCRAPE_S = 2.0
WINDOW = 5  # scrapes: rates and quantiles over 10 s (Grafana's queries: 5m)
DRAIN_S = 12.0
START_TIMEOUT_S = 60.0
COLUMNS = ["id", "name", "amount", "when"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def free_pair() -> int:
    """A free port whose next one is free too (the two workers' metrics ports)."""
    for _ in range(50):
        port = free_port()
        with contextlib.suppress(OSError), socket.socket() as s:
            s.bind(("127.0.0.1", port + 1))
            return port
    raise RuntimeError("no two free ports in a row")


# --- taskgate up ------------------------------------------------------------------------------


class Up:
    """``taskgate up`` in its own session; stopped by its pid (it stops its children)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.metrics_port = free_pair()
        self.log = workdir / "up.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.token = ""

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("TASKGATE_", "CELERY_", "CORS_", "PROMETHEUS_"))
        }
        env.update(
            TASKGATE_DATA_DIR=str(self.workdir / "data"),
            TASKGATE_HOST="127.0.0.1",
            TASKGATE_PORT=str(self.port),
            TASKGATE_WORKER_METRICS_PORT=str(self.metrics_port),
            CELERY_FAST_WORKER_CONCURRENCY="2",
            CELERY_HEAVY_WORKER_CONCURRENCY="2",
            # The webhook receiver is this script, on loopback.
            TASKGATE_WEBHOOK_ALLOWED_HOSTS="127.0.0.1",
            TASKGATE_WEBHOOK_ALLOW_PRIVATE="1",
            TASKGATE_WEBHOOK_BACKOFF_S="0.5",
        )
        return env

    @property
    def scrape_urls(self) -> dict[str, str]:
        return {
            "gateway": f"{self.url}metrics",
            "worker-fast": f"http://127.0.0.1:{self.metrics_port}/metrics",
            "worker-heavy": f"http://127.0.0.1:{self.metrics_port + 1}/metrics",
        }

    def start(self) -> None:
        binary = Path(sys.executable).parent / "taskgate"
        argv = [str(binary)] if binary.exists() else [shutil.which("taskgate") or "taskgate"]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [*argv, "up"], env=self.env(), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"taskgate up exited {self.proc.returncode}:\n{self.tail()}")
            for line in self.log.read_text(errors="replace").splitlines():
                if line.startswith("taskgate is up: "):
                    self.url = line.removeprefix("taskgate is up: ").split("?", 1)[0]
                elif line.strip().startswith("demo token:"):
                    self.token = line.split(":", 1)[1].strip()
            if self.url and self.token:
                break
            time.sleep(0.2)
        else:
            raise TimeoutError(f"taskgate up not up after {START_TIMEOUT_S:g}s:\n{self.tail()}")
        for port in (self.metrics_port, self.metrics_port + 1):
            self._wait_port(port, deadline)

    def _wait_port(self, port: int, deadline: float) -> None:
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                return
            time.sleep(0.2)
        raise TimeoutError(f"no worker metrics on port {port}:\n{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        # Its children (redis-server, the workers), each the leader of a process group of its
        # own: noted now, so that they can still be stopped if `up` itself does not stop them.
        children = _children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(45)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        for pid in children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        self.proc = None


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


# --- the webhook receiver and the load -------------------------------------------------------


@contextlib.asynccontextmanager
async def webhook_receiver() -> AsyncIterator[tuple[str, Counter[str]]]:
    """An endpoint on loopback that answers 503 to one call in four (the worker retries)."""
    calls: Counter[str] = Counter()

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        calls["all"] += 1
        if calls["all"] % 4 == 0:
            calls["refused"] += 1
            return web.Response(status=503, text="busy")
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/hook", calls
    finally:
        await runner.cleanup()


class Load:
    """A mixed load over HTTP, as the demo user."""

    def __init__(self, session: aiohttp.ClientSession, up: Up, hook: str) -> None:
        self.session = session
        self.base = up.url
        self.headers = {"Authorization": f"Bearer {up.token}"}
        self.hook = hook
        self.rng = random.Random(17)
        self.submitted: Counter[str] = Counter()
        self.refused: Counter[int] = Counter()
        self.cancels = 0
        self.pending: set[asyncio.Task[None]] = set()

    def body(self) -> dict[str, Any]:
        r = self.rng
        kind = r.choices(["count", "report", "fail", "flaky", "sleep"], [5, 2, 1, 1, 2])[0]
        body: dict[str, Any]
        if kind == "count":
            body = {"task": "demo.count",
                    "input": {"steps": r.randint(3, 8), "delay": round(r.uniform(0.03, 0.15), 3)},
                    "queue": r.choice(["fast", "fast", "heavy"])}  # fmt: skip
        elif kind == "report":
            body = {"task": "demo.report", "input": {
                "rows": r.randint(200, 20000), "columns": COLUMNS[: r.randint(1, 4)],
                "options": {"format": r.choice(["csv", "json"])}}}  # fmt: skip
        elif kind == "fail":
            body = {
                "task": "demo.fail",
                "input": {"message": "on purpose", "after": r.randint(0, 3)},
            }
        elif kind == "flaky":
            body = {"task": "demo.flaky", "input": {"fail_times": r.randint(1, 2)}}
        else:
            body = {"task": "demo.sleep", "input": {"seconds": round(r.uniform(0.5, 3.0), 2)},
                    "queue": "heavy"}  # fmt: skip
        if r.random() < 0.25:
            body["callback_url"] = self.hook
        return body

    async def submit(self, body: dict[str, Any]) -> str | None:
        async with self.session.post(
            f"{self.base}api/tasks", json=body, headers=self.headers
        ) as resp:
            if resp.status != 202:
                self.refused[resp.status] += 1
                return None
            self.submitted[body["task"]] += 1
            task_id: str = (await resp.json())["task_id"]
            return task_id

    async def cancel_later(self, task_id: str, after: float) -> None:
        await asyncio.sleep(after)
        async with self.session.delete(
            f"{self.base}api/tasks/{task_id}", headers=self.headers
        ) as resp:
            if resp.status == 202:
                self.cancels += 1

    def later(self, task_id: str, after: float) -> None:
        task = asyncio.create_task(self.cancel_later(task_id, after))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def run(self, seconds: float) -> None:
        started = time.monotonic()
        bursts = {LOAD_S * 0.3, LOAD_S * 0.65}
        while (elapsed := time.monotonic() - started) < seconds:
            for at in sorted(bursts):
                if elapsed >= at:  # a burst: the queues fill, then drain
                    bursts.discard(at)
                    await asyncio.gather(*(self.submit(self.body()) for _ in range(16)))
            body = self.body()
            task_id = await self.submit(body)
            if task_id and body["task"] == "demo.sleep" and self.rng.random() < 0.4:
                self.later(task_id, self.rng.uniform(0.3, 1.5))  # cancelled while it runs
            if self.rng.random() < 0.05:  # held by its countdown, cancelled before it starts
                held = {"task": "demo.count", "input": {"steps": 2}, "countdown": 30}
                held_id = await self.submit(held)
                if held_id:
                    self.later(held_id, 1.0)
            await asyncio.sleep(self.rng.uniform(0.15, 0.45))
        if self.pending:
            await asyncio.wait(self.pending, timeout=5)


# --- scraping ---------------------------------------------------------------------------------


async def scrape_once(session: aiohttp.ClientSession, urls: dict[str, str], t0: float) -> dm.Scrape:
    async def get(url: str) -> str | None:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                if resp.status == 200:
                    return await resp.text()
        return None

    at = time.monotonic() - t0
    texts = await asyncio.gather(*(get(url) for url in urls.values()))
    scrape = dm.Scrape(at=round(at, 3))
    for instance, text in zip(urls, texts, strict=True):
        if text is not None:
            scrape.add(instance, text)
    return scrape


async def scraper(
    session: aiohttp.ClientSession, urls: dict[str, str], out: list[dm.Scrape], stop: asyncio.Event
) -> None:
    t0 = time.monotonic()
    while True:
        out.append(await scrape_once(session, urls, t0))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SCRAPE_S - (time.monotonic() - t0) % SCRAPE_S)
            out.append(await scrape_once(session, urls, t0))
            return


def totals(scrape: dm.Scrape, metric: str, label: str) -> dict[str, int]:
    """The last values of ``metric``, summed by ``label`` and rounded."""
    found: dict[str, float] = defaultdict(float)
    for labels, value in scrape.samples.get(metric, {}).items():
        found[dict(labels).get(label, "")] += value
    return {k: round(v) for k, v in sorted(found.items())}


# --- the run ---------------------------------------------------------------------------------


async def run_load(up: Up) -> tuple[list[dm.Scrape], dict[str, Any]]:
    scrapes: list[dm.Scrape] = []
    updates = 0
    sio = socketio.AsyncClient(reconnection=False)

    async def on_task(data: dict[str, Any]) -> None:
        nonlocal updates
        updates += 1

    sio.on("task", on_task)

    started = time.monotonic()
    async with aiohttp.ClientSession() as session, webhook_receiver() as (hook, calls):
        await sio.connect(up.url, auth={"token": up.token}, transports=["websocket"])
        stop = asyncio.Event()
        scraping = asyncio.create_task(scraper(session, up.scrape_urls, scrapes, stop))
        try:
            load = Load(session, up, hook)
            await load.run(LOAD_S)
            # Until what was submitted has ended (or DRAIN_S): the panels' tails.
            drain = time.monotonic() + DRAIN_S
            while time.monotonic() < drain:
                await asyncio.sleep(SCRAPE_S)
                last = scrapes[-1]
                ended = sum(totals(last, "taskgate_task_executions_total", "status").values())
                if ended >= sum(load.submitted.values()):
                    break
            await asyncio.sleep(SCRAPE_S)
        finally:
            stop.set()
            await scraping
            await sio.disconnect()
    last = scrapes[-1]
    run = {
        "load_s": LOAD_S,
        "duration_s": round(time.monotonic() - started, 1),
        "scrapes": len(scrapes),
        "submitted": dict(sorted(load.submitted.items())),
        "submitted_total": sum(load.submitted.values()),
        "refused": {str(k): v for k, v in load.refused.items()},
        "cancel_requests_accepted": load.cancels,
        "ended_by_status": totals(last, "taskgate_task_executions_total", "status"),
        "ended_by_task": totals(last, "taskgate_task_executions_total", "task"),
        "retries": sum(totals(last, "taskgate_task_retries_total", "task").values()),
        "webhook_calls": calls["all"],
        "webhook_calls_refused": calls["refused"],
        "socket_updates": updates,
        "delivery_lag_samples": sum(
            totals(last, "taskgate_delivery_lag_seconds_count", "").values()
        ),
    }
    return scrapes, run


def panel_data(scrapes: list[dm.Scrape], run: dict[str, Any]) -> dict[str, Any]:
    dashboard = json.loads(DASHBOARD_JSON.read_text())
    t0 = scrapes[WINDOW].at if len(scrapes) > WINDOW else 0.0
    panels = []
    for panel in dashboard["panels"]:
        out = []
        for target in panel["targets"]:
            expr = dm.parse(target["expr"])
            for labels, points in dm.series(expr, scrapes, WINDOW).items():
                name = dm.legend(target.get("legendFormat", ""), labels)
                pts = [[round(t - t0, 1), _round(v)] for t, v in points]
                out.append({"name": name, "points": pts})
        defaults = panel.get("fieldConfig", {}).get("defaults", {})
        panels.append({
            "title": panel["title"],
            "description": panel.get("description", ""),
            "queries": [t["expr"] for t in panel["targets"]],
            "unit": defaults.get("unit", "short"),
            "stacked": defaults.get("custom", {}).get("stacking", {}).get("mode") == "normal",
            "gridPos": panel["gridPos"],
            "series": out,
        })  # fmt: skip
    return {
        "title": dashboard["title"],
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "scrape_interval_s": SCRAPE_S,
        "window_s": SCRAPE_S * WINDOW,
        "run": run,
        "panels": panels,
    }


def _round(v: float | None) -> float | None:
    if v is None or not math.isfinite(v):
        return None
    return float(f"{v:.5g}")


# --- the picture ------------------------------------------------------------------------------

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>taskgate dashboard</title>
<style>
  html, body { margin: 0; background: #111217; color: #ccccdc;
               font: 13px/1.3 Inter, "Helvetica Neue", Arial, sans-serif; }
  header { display: flex; align-items: baseline; gap: 16px; padding: 10px 14px 4px; }
  header h1 { font-size: 18px; margin: 0; color: #fff; font-weight: 500; }
  header p { margin: 0; color: #8e8e9a; font-size: 12px; }
  main { display: grid; grid-template-columns: repeat(24, 1fr); gap: 8px; padding: 6px 10px; }
  .panel { background: #181b1f; border: 1px solid #2c2f36; border-radius: 3px;
           display: flex; flex-direction: column; padding: 6px 8px 4px; min-width: 0; }
  .panel h2 { font-size: 13px; font-weight: 500; margin: 0 0 2px; color: #d8d9da; }
  .panel .empty { color: #8e8e9a; font-size: 12px; margin: auto; }
  .chart { position: relative; flex: 1; min-height: 0; }
</style></head>
<body><header><h1></h1><p id="meta"></p></header><main></main>
<script src="chart.umd.js"></script>
<script src="data.js"></script>
<script>
const COLORS = ["#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#f2495c", "#b877d9", "#8ab8ff",
                "#96d98d", "#fade2a", "#ffb357", "#ca95e5", "#ff7383"];
const STATUS = { COMPLETED: "#73bf69", FAILED: "#f2495c", CANCELLED: "#8e8e9a",
                 TIMED_OUT: "#ff9830", p50: "#5794f2", p99: "#ff9830" };
function fmt(unit, v) {
  if (v === null || v === undefined) return "";
  if (unit === "s") {
    if (v === 0) return "0";
    if (v < 0.001) return (v * 1e6).toFixed(0) + " µs";
    if (v < 1) return +(v * 1000).toPrecision(3) + " ms";
    return +v.toPrecision(3) + " s";
  }
  if (unit === "ops") return +v.toPrecision(3) + "/s";
  return +v.toPrecision(3) + "";
}
const D = window.DASHBOARD;
document.querySelector("h1").textContent = D.title;
const r = D.run;
document.querySelector("#meta").textContent =
  `a real run: ${r.submitted_total} tasks submitted over ${r.load_s} s, ` +
  `${Object.values(r.ended_by_status).reduce((a, b) => a + b, 0)} ended; ` +
  `scraped every ${D.scrape_interval_s} s, rates and quantiles over ${D.window_s} s windows ` +
  `(the Grafana queries use [5m]) · x axis: seconds · ${D.generated_at}`;
Chart.defaults.color = "#8e8e9a";
Chart.defaults.borderColor = "#2c2f36";
Chart.defaults.font.size = 11;
const main = document.querySelector("main");
const rows = Math.max(...D.panels.map(p => p.gridPos.y + p.gridPos.h)) / 8;
main.style.gridTemplateRows = `repeat(${rows}, ${(window.innerHeight - 52) / rows - 8}px)`;
for (const p of D.panels) {
  const el = document.createElement("section");
  el.className = "panel";
  el.style.gridColumn = `${p.gridPos.x + 1} / span ${p.gridPos.w}`;
  el.style.gridRow = `${p.gridPos.y / 8 + 1} / span ${p.gridPos.h / 8}`;
  el.title = p.description;
  el.innerHTML = "<h2></h2>";
  el.querySelector("h2").textContent = p.title;
  main.appendChild(el);
  if (!p.series.length) {
    el.insertAdjacentHTML("beforeend", '<div class="empty">No data</div>');
    continue;
  }
  const box = document.createElement("div");
  box.className = "chart";
  const canvas = document.createElement("canvas");
  box.appendChild(canvas);
  el.appendChild(box);
  const datasets = p.series.map((s, i) => {
    const color = STATUS[s.name] || COLORS[i % COLORS.length];
    return { label: s.name, data: s.points.map(([x, y]) => ({ x, y })), borderColor: color,
             backgroundColor: color + (p.stacked ? "99" : "22"), fill: p.stacked ? "stack" : false,
             borderWidth: 1.5, pointRadius: 0, spanGaps: false, tension: 0 };
  });
  new Chart(canvas, {
    type: "line", data: { datasets },
    options: {
      animation: false, responsive: true, maintainAspectRatio: false,
      scales: {
        x: { type: "linear", ticks: { maxTicksLimit: 8, callback: v => v + "s" },
             grid: { color: "#22252b" } },
        y: { beginAtZero: true, stacked: p.stacked, grid: { color: "#22252b" },
             ticks: { maxTicksLimit: 5, callback: v => fmt(p.unit, v) } },
      },
      plugins: { legend: { position: "bottom", labels: { boxWidth: 10, boxHeight: 2,
                 padding: 6, font: { size: 10.5 } } }, tooltip: { enabled: false } },
    },
  });
}
window.chartsReady = true;
</script></body></html>
"""

RENDER_JS = """
import { createRequire } from "node:module";
const [webDir, page, png, width, height, executablePath] = process.argv.slice(2);
const { chromium } = createRequire(webDir + "/package.json")("playwright-core");
const browser = await chromium.launch({
  executablePath, headless: true, timeout: 30000,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const tab = await browser.newPage({ viewport: { width: +width, height: +height } });
  const errors = [];
  tab.on("pageerror", e => errors.push(String(e)));
  await tab.goto("file://" + page);
  await tab.waitForFunction(() => window.chartsReady === true, null, { timeout: 15000 })
    .catch(e => { throw new Error(`page not drawn: ${errors.join("; ") || e}`); });
  await tab.screenshot({ path: png });
} finally {
  await browser.close();
}
"""


def render(data: dict[str, Any], png: Path = PNG) -> None:
    chart = WEB / "node_modules" / "chart.js" / "dist" / "chart.umd.js"
    if not chart.exists():
        raise SystemExit(f"{chart} is missing: run `cd web && npm ci` (or `make setup`)")
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"chromium not found at {CHROMIUM} (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="taskgate-dashboard-page-") as tmp:
        page = Path(tmp)
        shutil.copy(chart, page / "chart.umd.js")
        (page / "data.js").write_text("window.DASHBOARD = " + json.dumps(data) + ";\n")
        (page / "index.html").write_text(PAGE)
        (page / "render.mjs").write_text(RENDER_JS)
        argv = ["node", str(page / "render.mjs"), str(WEB), str(page / "index.html"), str(png),
                str(VIEWPORT[0]), str(VIEWPORT[1]), CHROMIUM]  # fmt: skip
        with _process(argv) as proc:
            proc.wait(90)
            if proc.returncode != 0:
                raise RuntimeError(f"rendering failed (node exited {proc.returncode})")


@contextlib.contextmanager
def _process(argv: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    """``argv`` in a process group of its own (node and the chromium it starts), stopped by
    that group's id if it is still running when the block ends."""
    proc = subprocess.Popen(argv, cwd=ROOT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--render", action="store_true", help="only draw docs/dashboard-data.json")
    args = parser.parse_args()
    if args.render:
        render(json.loads(DATA_JSON.read_text()))
        print(f"wrote {PNG.relative_to(ROOT)}")
        return 0
    with tempfile.TemporaryDirectory(prefix="taskgate-dashboard-") as tmp:
        up = Up(Path(tmp))
        try:
            print(f"starting taskgate up in {tmp} ...", flush=True)
            up.start()
            print(f"up at {up.url}; load for {LOAD_S:g}s, scraping {list(up.scrape_urls)}",
                  flush=True)  # fmt: skip
            scrapes, run = asyncio.run(run_load(up))
        except BaseException:
            print(up.tail(), file=sys.stderr)
            raise
        finally:
            up.stop()
    data = panel_data(scrapes, run)
    DATA_JSON.write_text(json.dumps(data, indent=1) + "\n")
    render(data)
    print(json.dumps(run, indent=1))
    print(f"wrote {DATA_JSON.relative_to(ROOT)} and {PNG.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
