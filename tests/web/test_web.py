"""The web client: its state logic under node's test runner, the official JS socket.io-client in
node, and the page itself in Debian's chromium driven by Playwright (playwright-core, no browser
download), all against a real gateway process and the session's real Celery worker.

node, chromium and web/node_modules are required: a missing one fails with a clear message (CI
installs them: scripts/system-deps.sh and ``npm ci`` in web/), it is never skipped.
Set ``TASKGATE_UPDATE_SCREENSHOT=1`` (or run ``make screenshots``) to write the screenshots to
docs/screenshot-390.png and docs/screenshot-1280.png.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jwt
import pytest

from tests.support import ROOT, CeleryWorker, GatewayProcess, make_token

BROWSER_DIR = ROOT / "tests" / "web" / "browser"
WEB_DIR = ROOT / "web"
CHROMIUM = os.environ.get("TASKGATE_CHROMIUM", "/usr/bin/chromium")
NODE_TIMEOUT_S = 100.0
VIEWPORTS = ("390x844", "1280x800")
SCREENSHOT_WIDTHS = (390, 1280)


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: the web tests need Node 20+ (see the README)")
    return node


def _require_browser_deps() -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"chromium not found at {CHROMIUM}: run scripts/system-deps.sh (as root)")
    for package in ("socket.io-client", "playwright-core", "axe-core"):
        if not (WEB_DIR / "node_modules" / package / "package.json").is_file():
            pytest.fail(f"web/node_modules/{package} missing: run `npm ci` in web/ (make setup)")


def user() -> str:
    return f"web-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def web_gateway(
    env: dict[str, str], celery_worker: CeleryWorker, log_dir: Path
) -> Iterator[GatewayProcess]:
    """The gateway as a process of its own, so a test can kill it and start it on the same port."""
    gateway = GatewayProcess(env, log_dir).start()
    yield gateway
    gateway.stop()


def _node_env(gateway: GatewayProcess, **extra: str) -> dict[str, str]:
    return {**os.environ, "TASKGATE_URL": gateway.url, "NO_COLOR": "1", **extra}


def _parse_result(stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            result: dict[str, Any] = json.loads(line)
            return result
    raise AssertionError(f"no result line in:\n{stdout}")


def run_node(args: list[str], env: Mapping[str, str], timeout: float = NODE_TIMEOUT_S) -> str:
    try:
        proc = subprocess.run(
            [_node(), *args], cwd=ROOT, env=dict(env), capture_output=True, text=True,
            timeout=timeout, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        msg = f"node {args} timed out after {timeout}s:\n{exc.stdout!s}\n{exc.stderr!s}"
        raise AssertionError(msg) from None
    assert proc.returncode == 0, f"node {args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def run_scenario(
    name: str,
    gateway: GatewayProcess,
    token: str,
    on_restart: Any = None,
    timeout: float = NODE_TIMEOUT_S,
    **extra: str,
) -> dict[str, Any]:
    """Run one browser scenario; answer its requests to restart the gateway."""
    _require_browser_deps()
    env = _node_env(gateway, TASKGATE_TOKEN=token, **extra)
    proc = subprocess.Popen(
        [_node(), str(BROWSER_DIR / "scenarios.mjs"), name], cwd=ROOT, env=env, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None and proc.stdin is not None
    lines: queue.Queue[str | None] = queue.Queue()
    stderr: list[str] = []

    def pump_stdout() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    def pump_stderr() -> None:
        assert proc.stderr is not None
        stderr.extend(proc.stderr)

    readers = [threading.Thread(target=f, daemon=True) for f in (pump_stdout, pump_stderr)]
    for reader in readers:
        reader.start()
    out: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"scenario {name} timed out:\n{''.join(out)}{''.join(stderr)}")
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                break
            out.append(line)
            if line.strip() == "@@restart-gateway":
                assert on_restart is not None, "scenario asked for a restart nobody offered"
                on_restart()
                proc.stdin.write("restarted\n")
                proc.stdin.flush()
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        for reader in readers:
            reader.join(5)
    text = "".join(out)
    print(text)  # shown by pytest on failure, or with -s
    assert proc.returncode == 0, f"scenario {name} failed:\n{text}{''.join(stderr)}"
    return _parse_result(text)


# ---- node: unit tests of the client's state, and the official client end to end -----------


def test_js_unit_tests_pass_under_node_test_runner() -> None:
    # Files named one by one: node 20 takes a directory, node 22 only files or globs.
    files = sorted(str(p.relative_to(ROOT)) for p in (WEB_DIR / "test").glob("*.test.js"))
    assert files, "no web/test/*.test.js"
    out = run_node(["--test", *files], os.environ, timeout=60)
    assert "# fail 0" in out, out
    passed = int(out.split("# pass ")[1].split()[0])
    assert passed >= 20, out


def test_official_js_client_in_node_follows_a_task_to_completed(
    web_gateway: GatewayProcess,
) -> None:
    _require_browser_deps()
    token = make_token(user())
    out = run_node(
        [str(BROWSER_DIR / "node_client.mjs")], _node_env(web_gateway, TASKGATE_TOKEN=token)
    )
    result = _parse_result(out)
    assert result["ok"] and result["result"] == {"counted": 6}
    assert result["seqs"] == list(range(1, 10))
    assert result["statuses"][0] == "PENDING" and result["statuses"][-1] == "COMPLETED"
    assert result["refused"].startswith("invalid token")


# ---- the page in chromium -------------------------------------------------------------------


def test_page_runs_demo_count_to_completed(web_gateway: GatewayProcess) -> None:
    result = run_scenario("count", web_gateway, make_token(user()))
    assert result["ok"] and result["samples"] >= 3


def test_page_cancels_demo_sleep(web_gateway: GatewayProcess) -> None:
    result = run_scenario("cancel", web_gateway, make_token(user()))
    assert result["ok"] and result["percent"] < 100


def test_page_shows_a_failed_tasks_error(web_gateway: GatewayProcess) -> None:
    result = run_scenario("fail", web_gateway, make_token(user()))
    assert result["error"].startswith("DemoFailure: kaboom")


def test_page_shows_retry_attempts_and_due_times(web_gateway: GatewayProcess) -> None:
    result = run_scenario("retry", web_gateway, make_token(user()))
    retrying = [p for p in result["phases"] if p.startswith("retrying (attempt ")]
    assert retrying and all(p.endswith(" of 6)") for p in retrying)
    assert result["due"].startswith("due at ")


@pytest.fixture
def stall_stack(
    env: dict[str, str], log_dir: Path
) -> Iterator[tuple[GatewayProcess, CeleryWorker]]:
    """A gateway and a worker of their own (their own key prefix) beating every 0.5 s, so a
    frozen worker shows stalled within seconds (three missed beats)."""
    own = {**env, "TASKGATE_KEY_PREFIX": f"stall-{uuid.uuid4().hex[:6]}:",
           "TASKGATE_TASK_HEARTBEAT_S": "0.5"}  # fmt: skip
    worker = CeleryWorker(own, log_dir, queues="fast", concurrency=1).start()
    gateway = GatewayProcess(own, log_dir).start()
    try:
        yield gateway, worker
    finally:
        gateway.stop()
        worker.stop(signal.SIGKILL)


def _http(method: str, url: str, token: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)


def test_page_shows_a_stalled_task(stall_stack: tuple[GatewayProcess, CeleryWorker]) -> None:
    gateway, worker = stall_stack
    token = make_token(user())
    task = _http("POST", f"{gateway.url}/api/tasks", token,
                 {"task": "demo.sleep", "input": {"seconds": 30}})  # fmt: skip
    url = f"{gateway.url}/api/tasks/{task['task_id']}"
    deadline = time.monotonic() + 20
    while _http("GET", url, token)["status"] != "RUNNING":
        assert time.monotonic() < deadline, "demo.sleep never started"
        time.sleep(0.1)
    assert worker.proc is not None
    frozen = [worker.proc.pid, *worker.pool_pids()]
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)  # no more heartbeats: the real stall watch notices
    try:
        result = run_scenario("stall", gateway, token, TASKGATE_TASK_ID=task["task_id"])
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    assert result["status"] == "RUNNING"
    assert result["phase"] == "stalled: its worker has gone quiet"
    # Thawed, its next beat clears the flag.
    deadline = time.monotonic() + 20
    while _http("GET", url, token)["stalled"]:
        assert time.monotonic() < deadline, "stalled never cleared after the worker resumed"
        time.sleep(0.1)
    _http("DELETE", url, token)


def test_page_refuses_expired_and_bad_tokens_clearly(web_gateway: GatewayProcess) -> None:
    name = user()
    forged = jwt.encode(
        {"sub": name, "exp": int(time.time()) + 3600}, "not-the-secret-" + "z" * 40, "HS256"
    )
    result = run_scenario(
        "bad-token",
        web_gateway,
        make_token(name),
        TASKGATE_EXPIRED_TOKEN=make_token(name, ttl=-3600),
        TASKGATE_BAD_TOKEN=forged,
    )
    assert "token expired" in result["expired"] and "invalid token" in result["bad"]


def test_page_screenshot_with_bars_in_flight(web_gateway: GatewayProcess, tmp_path: Path) -> None:
    """Writes docs/screenshot-390.png and docs/screenshot-1280.png with
    ``TASKGATE_UPDATE_SCREENSHOT=1`` (``make screenshots``); a temp dir otherwise."""
    update = os.environ.get("TASKGATE_UPDATE_SCREENSHOT") == "1"
    out = ROOT / "docs" if update else tmp_path
    run_scenario("screenshot", web_gateway, make_token("demo"), TASKGATE_SCREENSHOT_DIR=str(out))
    for width in SCREENSHOT_WIDTHS:
        assert (out / f"screenshot-{width}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_page_layout_fits_the_screen(web_gateway: GatewayProcess, viewport: str) -> None:
    """No sideways scroll (360 px too), status pill whole, header in at most two rows, the task
    list before (phone) or beside (desktop) the forms, the new task in view after Run, and
    demo.fail's message field the width of its form."""
    result = run_scenario("layout", web_gateway, make_token(user()), TASKGATE_VIEWPORT=viewport)
    width = int(viewport.split("x")[0])
    for when, m in result["widths"].items():
        assert m["scrollWidth"] <= m["clientWidth"], (when, m)
    assert result["widths"]["loaded"]["clientWidth"] == width
    assert result["widths"]["at360"]["clientWidth"] == 360
    assert result["headerRows"] <= 2


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_page_has_no_serious_accessibility_violations(
    web_gateway: GatewayProcess, viewport: str
) -> None:
    """axe-core (web/node_modules) in the page: no "serious" or "critical" violation, on the
    empty page and with tasks of each kind and a form error shown."""
    result = run_scenario("a11y", web_gateway, make_token(user()), TASKGATE_VIEWPORT=viewport)
    assert result["ok"]


def test_page_builds_forms_from_task_types(web_gateway: GatewayProcess) -> None:
    """A form per task type of GET /api/task-types (demo.report, demo.add, demo.ray_primes with
    no page code);
    demo.report's list, nested group, enum and boolean; queue choice; bad values named at the
    field client-side (nothing sent) and from the server's 422 (input.options.format)."""
    result = run_scenario("schema-forms", web_gateway, make_token(user()))
    assert {"demo.report", "demo.add", "demo.ray_primes"} <= set(result["forms"])
    assert result["client"] == {"rows": "at least 1", "column": "required"}


def test_page_panel_agrees_with_the_header_and_counts_ended_tasks_out(
    web_gateway: GatewayProcess,
) -> None:
    result = run_scenario("panel", web_gateway, make_token(user()))
    assert result["ok"]


def test_page_shows_a_workflow_roll_up(web_gateway: GatewayProcess) -> None:
    result = run_scenario("workflow", web_gateway, make_token(user()))
    assert result["line"] == "100% · chain · 2 of 2 tasks done"


def test_page_survives_a_gateway_restart_mid_task(web_gateway: GatewayProcess) -> None:
    """Killed (SIGKILL) with a task in flight and started again on the same port: the page
    reconnects, re-watches its task and the bar completes."""

    def restart() -> None:
        web_gateway.stop(signal.SIGKILL)
        time.sleep(1.0)  # long enough for the worker to move on while nobody relays
        web_gateway.start()

    result = run_scenario("restart", web_gateway, make_token(user()), on_restart=restart)
    assert result["ok"] and result["before"] < 100
    assert result["watched"] >= 2  # the page re-watched its task with the last seq it applied
    assert "connected" in result["states"]
