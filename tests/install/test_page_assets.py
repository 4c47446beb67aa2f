"""Where the gateway finds its page (gateway.http.page.PageAssets), and what ``/`` says when a
part is missing: plainly, at once, instead of a page waiting for a library that never loads."""

from __future__ import annotations

import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.http.page import PageAssets, add_page_routes
from tests.support import ROOT

Client = Callable[[web.Application], Awaitable[TestClient]]


def checkout_without_npm(tmp_path: Path) -> Path:
    """A copy of the checkout's page, as a clone without ``npm ci`` has it."""
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'taskgate'\n")
    shutil.copytree(ROOT / "web" / "src", tmp_path / "web" / "src")
    return tmp_path


async def test_a_checkout_without_npm_ci_says_so_on_the_page(
    tmp_path: Path, aiohttp_client: Client
) -> None:
    assets = PageAssets.find(packaged=tmp_path / "none", checkout=checkout_without_npm(tmp_path))
    assert assets.origin == "checkout"
    assert [m.split(" (")[0] for m in assets.missing()] == ["the socket.io-client bundle"]
    app = web.Application()
    add_page_routes(app, assets)
    client = await aiohttp_client(app)
    resp = await client.get("/")
    text = await resp.text()
    assert resp.status == 503 and resp.content_type == "text/html"
    assert "Retry-After" not in resp.headers  # retrying cannot help until it is installed
    assert "socket.io-client bundle" in text and "npm ci" in text
    # Its modules are still served (so the failure is only the one named).
    assert (await client.get("/static/app.js")).status == 200


async def test_an_install_without_its_assets_says_reinstall(
    tmp_path: Path, aiohttp_client: Client
) -> None:
    assets = PageAssets.find(packaged=tmp_path / "page_assets", checkout=tmp_path / "site")
    assert assets.origin == "installed" and len(assets.missing()) == 2
    app = web.Application()
    add_page_routes(app, assets)
    resp = await (await aiohttp_client(app)).get("/")
    assert resp.status == 503 and "reinstall taskgate" in await resp.text()


def test_the_checkout_serves_its_own_web_directory() -> None:
    assets = PageAssets.find()
    assert assets.origin == "checkout"
    assert assets.pages == ROOT / "web" / "src" and assets.missing() == []
