"""What a user installs: the sdist and the wheel, built from this checkout as a user would
(``python -m build``), carry the web page and the socket.io-client bundle; the wheel, installed
into a fresh virtualenv outside the checkout, runs ``taskgate up`` from an empty directory (its
own Redis, its own workers, the gateway), and the page it serves works in a real browser.

Nothing of the checkout is on that install's path: it runs from a temporary directory with the
virtualenv's own Python, and the test asserts that ``gateway`` is imported from there.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tarfile
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.install.conftest import NPM_CLIENT, Up, run
from tests.support import ROOT

CHROMIUM = os.environ.get("TASKGATE_CHROMIUM", "/usr/bin/chromium")
PAGE_CHECK = Path(__file__).with_name("page_check.mjs")
ASSETS = "gateway/http/page_assets"
PAGE_FILES = [f"{ASSETS}/src/{p.name}" for p in sorted((ROOT / "web" / "src").iterdir())]
BUNDLE_FILES = [
    f"{ASSETS}/vendor/socket.io-client/{name}"
    for name in ("socket.io.esm.min.js", "socket.io.esm.min.js.map", "LICENSE", "VERSION.json")
]


@pytest.fixture(scope="module")
def installed(built: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv, outside the checkout, with the wheel (and its dependencies)."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    run([sys.executable, "-m", "venv", str(venv)], timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    run([*pip, "--disable-pip-version-check", str(built["wheel"])], timeout=600)
    return venv


def test_the_wheel_and_the_sdist_carry_the_page_and_the_bundle(built: dict[str, Path]) -> None:
    names = zipfile.ZipFile(built["wheel"]).namelist()
    print("wheel:", built["wheel"].name)
    for name in sorted(n for n in names if "page_assets" in n):
        print("  ", name)
    assert set(PAGE_FILES) | set(BUNDLE_FILES) <= set(names), sorted(names)
    assert f"{ASSETS}/src/index.html" in names and "shared/lua/transition.lua" in names
    assert not [n for n in names if n.startswith(("tests/", "web/", "bench/"))]
    # The bundle is the npm package's, byte for byte, with its licence and version.
    wheel = zipfile.ZipFile(built["wheel"])
    bundle = wheel.read(f"{ASSETS}/vendor/socket.io-client/socket.io.esm.min.js")
    assert bundle == (NPM_CLIENT / "dist" / "socket.io.esm.min.js").read_bytes()
    version = json.loads(wheel.read(f"{ASSETS}/vendor/socket.io-client/VERSION.json"))
    npm = json.loads((NPM_CLIENT / "package.json").read_text())
    assert version == {"name": "socket.io-client", "version": npm["version"]}
    assert b"MIT" in wheel.read(f"{ASSETS}/vendor/socket.io-client/LICENSE")
    with tarfile.open(built["sdist"]) as sdist:
        members = {m.name.split("/", 1)[1] for m in sdist.getmembers() if "/" in m.name}
    assert set(PAGE_FILES) | set(BUNDLE_FILES) <= members
    assert "setup.py" in members and "web/src/index.html" in members


@pytest.fixture(scope="module")
def up(installed: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Up, str]]:
    cwd = tmp_path_factory.mktemp("empty")
    assert list(cwd.iterdir()) == []
    where = run(
        [str(installed / "bin" / "python"), "-c", "import gateway; print(gateway.__file__)"],
        timeout=60,
        cwd=cwd,
    ).stdout.strip()
    assert str(installed) in where and str(ROOT) not in where, where
    server = Up(installed, cwd)
    try:
        link = server.wait_ready()
        yield server, link
    finally:
        code = server.stop()
        assert code == 0, f"taskgate up did not stop cleanly ({code}):\n{server.log.read_text()}"


def fetch(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.read()


def test_taskgate_up_from_the_wheel_serves_the_page_and_the_bundle(up: tuple[Up, str]) -> None:
    server, _ = up
    status, page = fetch(server.url + "/")
    assert status == 200 and b'<script type="module" src="/static/app.js">' in page
    status, bundle = fetch(server.url + "/vendor/socket.io-client/socket.io.esm.min.js")
    assert status == 200
    assert bundle == (NPM_CLIENT / "dist" / "socket.io.esm.min.js").read_bytes()
    status, _ = fetch(server.url + "/static/app.js")
    assert status == 200


def test_the_installed_page_runs_a_task_in_a_real_browser(up: tuple[Up, str]) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: the page check needs Node 20+")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"chromium not found at {CHROMIUM}: run scripts/system-deps.sh (as root)")
    _, link = up
    out = run(
        [node, str(PAGE_CHECK), link],
        timeout=120,
        cwd=ROOT / "web",  # playwright-core from web/node_modules drives the browser
        env={**os.environ, "TASKGATE_CHROMIUM": CHROMIUM},
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print("installed page:", result)
    assert result["connected"] is True
    assert result["status"] == "COMPLETED" and result["percent"] == 100, result
    # Forms come from the installed registry, demo.report's and demo.add's included.
    assert {"demo.count", "demo.report", "demo.add"} <= set(result["forms"]), result
    assert result["overflow"] is False and result["errors"] == [], result
