"""The README's "Try it" examples (the CLI, curl, the JS client), run as written against a real
gateway process and the session's real Celery worker, so they cannot rot.

Each example is the fenced block right after an HTML comment ``<!-- readme-test: NAME -->`` in
README.md. The only changes made to them: the gateway's address (the README's
``http://127.0.0.1:8080`` becomes the test gateway's free loopback port) and, for the JS run line,
where the module was saved. ``.venv/bin/taskgate token`` signs with the tests' secret
(``TASKGATE_SECRET`` in the session's environment), as it signs with ``taskgate up``'s.

bash, curl, python3, node and web/node_modules/socket.io-client are required: a missing one
fails with a clear message, it is never skipped.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from gateway.cli.commands import DEMO_USER
from tests.support import ROOT, CeleryWorker, GatewayProcess, make_token, wait_until

README = ROOT / "README.md"
README_URL = "http://127.0.0.1:8080"
WEB_MODULES = ROOT / "web" / "node_modules"
RUN_TIMEOUT_S = 90.0
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}
# What the JS example prints for each update of its task: "<task id> seq <n> <status> <percent>%".
UPDATE_LINE = re.compile(r"^(?P<id>\S+) seq (?P<seq>\d+) (?P<status>[A-Z_]+) (?P<pct>[\d.]+)%$")


def readme_block(name: str) -> str:
    """The fenced code block right after ``<!-- readme-test: name -->`` in README.md."""
    text = README.read_text()
    marker = f"<!-- readme-test: {name} -->"
    assert text.count(marker) == 1, f"README.md should hold {marker!r} exactly once"
    after = text.split(marker, 1)[1]
    found = re.match(r"\s*```[\w-]*\n(.*?)\n```", after, re.DOTALL)
    assert found, f"no fenced code block right after {marker!r} in README.md"
    return found.group(1)


def at(block: str, gateway: GatewayProcess) -> str:
    """``block`` pointed at the test gateway instead of the README's address."""
    assert README_URL in block, f"the example should use {README_URL}:\n{block}"
    return block.replace(README_URL, gateway.url)


def require(*programs: str) -> None:
    for program in programs:
        if shutil.which(program) is None:
            pytest.fail(f"{program} is not on PATH: the README's examples need it")


def run(
    argv: list[str], env: Mapping[str, str], script: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``argv`` in the checkout (as the README says), with a bounded wait."""
    try:
        proc = subprocess.run(
            argv, cwd=ROOT, env=dict(env), input=script, capture_output=True, text=True,
            timeout=RUN_TIMEOUT_S,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        msg = f"{argv} ran over {RUN_TIMEOUT_S}s:\n{exc.stdout!s}\n{exc.stderr!s}"
        raise AssertionError(msg) from None
    print(proc.stdout, proc.stderr)  # shown by pytest on failure, or with -s
    if check:
        assert proc.returncode == 0, f"{argv} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    return proc


def token_user(block: str) -> str:
    found = re.findall(r"\.venv/bin/taskgate token (\S+?)\)", block)
    assert found, f"no `.venv/bin/taskgate token USER` in:\n{block}"
    assert len(set(found)) == 1, found
    return str(found[0])


def get(gateway: GatewayProcess, path: str, user: str) -> Any:
    """GET ``path`` as ``user`` with curl (no event loop in these tests to block)."""
    out = subprocess.run(
        ["curl", "-sS", "-H", f"Authorization: Bearer {make_token(user)}", gateway.url + path],
        capture_output=True, text=True, check=True, timeout=RUN_TIMEOUT_S,
    )  # fmt: skip
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def docs_gateway(
    env: dict[str, str], celery_worker: CeleryWorker, log_dir: Path
) -> Iterator[GatewayProcess]:
    """``taskgate gateway`` as a process of its own on a free port, with the session's worker."""
    gateway = GatewayProcess(env, log_dir).start()
    yield gateway
    gateway.stop()


@pytest.fixture
def js_dir(tmp_path: Path) -> Path:
    """A folder where ``import "socket.io-client"`` resolves (ESM ignores NODE_PATH)."""
    if not (WEB_MODULES / "socket.io-client" / "package.json").is_file():
        pytest.fail("web/node_modules/socket.io-client missing: run `npm ci` in web/ (make setup)")
    (tmp_path / "node_modules").symlink_to(WEB_MODULES, target_is_directory=True)
    return tmp_path


def test_try_it_uses_the_pages_user() -> None:
    """`taskgate up` hands the page a token for DEMO_USER; the examples sign in as that user."""
    assert token_user(readme_block("try-it")) == DEMO_USER
    assert token_user(readme_block("try-it-curl")) == DEMO_USER
    assert token_user(readme_block("watch-run")) == DEMO_USER


def test_try_it_cli_block_follows_a_task_to_completed_that_the_page_shows(
    docs_gateway: GatewayProcess, env: dict[str, str]
) -> None:
    """The CLI example: ``taskgate submit demo.count ... --follow`` exits 0 and ends with the
    result line (its bar is checked in a real terminal by tests/client/test_cli_terminal.py)."""
    require("bash")
    block = at(readme_block("try-it"), docs_gateway)
    assert "taskgate submit demo.count" in block and "--follow" in block, block
    proc = run(["bash", "-euo", "pipefail", "-s"], env, script=block)
    last = proc.stdout.strip().splitlines()[-1]
    found = re.fullmatch(r"COMPLETED demo\.count (?P<id>[\w-]{36})\s+result: (?P<result>.*)", last)
    assert found, f"the last line should be the outcome:\n{proc.stdout}"
    steps = json.loads(re.search(r"--input '([^']*)'", block).group(1))["steps"]  # type: ignore[union-attr]
    assert json.loads(found["result"]) == {"counted": steps}
    task_id = found["id"]
    assert get(docs_gateway, f"/api/tasks/{task_id}", DEMO_USER)["status"] == "COMPLETED"
    listed = get(docs_gateway, "/api/tasks?limit=100", DEMO_USER)["tasks"]
    assert task_id in {t["task_id"] for t in listed}
    # The README shows the outcome line as the command prints it.
    assert re.search(r"^# COMPLETED demo\.count \S+  result: ", block, re.MULTILINE), block


def test_try_it_curl_block_runs_a_task_to_completed_that_the_page_shows(
    docs_gateway: GatewayProcess, env: dict[str, str]
) -> None:
    require("bash", "curl", "python3")
    block = at(readme_block("try-it-curl"), docs_gateway)
    # -e and pipefail: any failing command (a refused token, a 4xx with curl -f) fails the test.
    proc = run(["bash", "-euo", "pipefail", "-s"], env, script=block)
    lines = proc.stdout.splitlines()
    task_id = lines[0].strip()
    assert re.fullmatch(r"[\w-]{8,}", task_id), f"first line should be the task id: {lines}"
    snapshots = [json.loads(line) for line in lines[1:]]
    assert len(snapshots) == 2, lines
    now, final = snapshots
    assert now["task_id"] == task_id and now["task"] == "demo.count"
    assert final["task_id"] == task_id
    assert final["status"] == "COMPLETED" and final["result"] == {"counted": 5}
    assert final["progress"]["percent"] == 100
    assert final["seq"] >= now["seq"]
    # The page's user sees it: in their task list, and in the connect-time snapshots the page
    # receives (a task that ended in the last 10 minutes).
    listed = get(docs_gateway, "/api/tasks?limit=100", DEMO_USER)["tasks"]
    assert task_id in {t["task_id"] for t in listed}
    assert get(docs_gateway, f"/api/tasks/{task_id}", DEMO_USER)["status"] == "COMPLETED"
    # And nobody else does.
    assert get(docs_gateway, f"/api/tasks/{task_id}", "alice")["error"]["code"] == "not_found"


def test_js_example_follows_its_own_task_to_completed_and_exits_0(
    docs_gateway: GatewayProcess, env: dict[str, str], js_dir: Path
) -> None:
    require("bash", "node")
    # Another task of the same user that ended a moment ago: the server sends its snapshot on
    # connect, and the example must not print it as its own.
    other = subprocess.run(
        [
            "curl", "-sS", "-H", f"Authorization: Bearer {make_token(DEMO_USER)}",
            "-H", "Content-Type: application/json",
            "-d", json.dumps({"task": "demo.count", "input": {"steps": 1, "delay": 0}}),
            docs_gateway.url + "/api/tasks",
        ],
        capture_output=True, text=True, check=True, timeout=RUN_TIMEOUT_S,
    )  # fmt: skip
    other_id = json.loads(other.stdout)["task_id"]
    wait_until(
        lambda: get(docs_gateway, f"/api/tasks/{other_id}", DEMO_USER)["status"] in TERMINAL,
        timeout=30,
    )

    module = js_dir / f"watch-{uuid.uuid4().hex[:6]}.mjs"
    module.write_text(at(readme_block("watch-js"), docs_gateway) + "\n")
    run_line = readme_block("watch-run")
    assert "web/watch.mjs" in run_line, run_line
    proc = run(
        ["bash", "-euo", "pipefail", "-s"],
        env,
        script=run_line.replace("web/watch.mjs", str(module)),
    )

    lines = proc.stdout.splitlines()
    updates = [m.groupdict() for m in map(UPDATE_LINE.match, lines) if m]
    assert updates, f"no update lines in:\n{proc.stdout}"
    assert lines[-1] == 'result: {"counted":5}', lines
    assert len(updates) == len(lines) - 1, f"unexpected lines:\n{proc.stdout}"
    ids = {u["id"] for u in updates}
    assert len(ids) == 1 and other_id not in ids, updates
    seqs = [int(u["seq"]) for u in updates]
    assert seqs == sorted(set(seqs)), f"seq should rise: {seqs}"
    percents = [float(u["pct"]) for u in updates]
    assert percents == sorted(percents), f"percent should never go back: {percents}"
    assert updates[-1]["status"] == "COMPLETED" and percents[-1] == 100
    assert all(u["status"] not in TERMINAL for u in updates[:-1]), updates
    # The task is the demo user's, so it shows on the page too.
    task_id = ids.pop()
    assert get(docs_gateway, f"/api/tasks/{task_id}", DEMO_USER)["status"] == "COMPLETED"


def test_js_example_exits_non_zero_on_a_refused_token(
    docs_gateway: GatewayProcess, env: dict[str, str], js_dir: Path
) -> None:
    require("node")
    module = js_dir / "watch.mjs"
    module.write_text(at(readme_block("watch-js"), docs_gateway) + "\n")
    proc = run(["node", str(module)], {**env, "TASKGATE_TOKEN": "not-a-token"}, check=False)
    assert proc.returncode == 1, proc
    assert "connect error: invalid token" in proc.stderr, proc.stderr
    assert proc.stdout == ""
