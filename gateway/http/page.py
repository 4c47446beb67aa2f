"""The web client: ``GET /`` (the page), ``/static/`` (its modules) and
``/vendor/socket.io-client`` (the official client's ESM bundle).

Where they come from (``PageAssets.find``, once at start):

- an installed taskgate (a wheel or an sdist): ``gateway/http/page_assets``, which the build
  (setup.py) filled from ``web/src`` and the socket.io-client npm package;
- a checkout (an editable install): ``web/src`` and ``web/node_modules/socket.io-client/dist``
  as they are, so an edit to the page shows on reload.

When a part is missing (a checkout without ``npm ci``), ``/`` says so plainly (503, no
``Retry-After``: retrying cannot help until someone installs it) instead of serving a page that
would wait for a client library that never loads.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

PACKAGED = Path(__file__).resolve().parent / "page_assets"
CHECKOUT = Path(__file__).resolve().parent.parent.parent
BUNDLE = "socket.io.esm.min.js"


@dataclass(frozen=True, slots=True)
class PageAssets:
    pages: Path  # index.html, app.js, ...
    vendor: Path  # the socket.io-client bundle
    origin: str  # "installed" or "checkout"

    @classmethod
    def find(cls, packaged: Path = PACKAGED, checkout: Path = CHECKOUT) -> PageAssets:
        web_dir = checkout / "web"
        if (checkout / "pyproject.toml").is_file() and (web_dir / "src" / "index.html").is_file():
            return cls(
                web_dir / "src",
                web_dir / "node_modules" / "socket.io-client" / "dist",
                "checkout",
            )
        return cls(packaged / "src", packaged / "vendor" / "socket.io-client", "installed")

    def missing(self) -> list[str]:
        """What the page needs and is not there."""
        out = []
        if not (self.pages / "index.html").is_file():
            out.append(f"the page ({self.pages / 'index.html'})")
        if not (self.vendor / BUNDLE).is_file():
            out.append(f"the socket.io-client bundle ({self.vendor / BUNDLE})")
        return out


def _missing_page(missing: list[str], origin: str) -> web.Response:
    fix = (
        "run `npm ci` in web/ (or `make setup`), then restart the gateway"
        if origin == "checkout"
        else "reinstall taskgate from a wheel or sdist built with its page"
    )
    items = "".join(f"<li>{html.escape(m)}</li>" for m in missing)
    body = (
        "<!doctype html><html lang=en><meta charset=utf-8><title>taskgate: page missing</title>"
        f"<h1>The taskgate page cannot load</h1><p>Missing:</p><ul>{items}</ul>"
        f"<p>To fix it: {html.escape(fix)}. The API works without the page.</p></html>"
    )
    return web.Response(
        text=body,
        status=503,
        content_type="text/html",
        headers={"Cache-Control": "no-cache"},
    )


def add_page_routes(app: web.Application, assets: PageAssets | None = None) -> None:
    # Looked up once here, not on the loop for every request.
    found = assets or PageAssets.find()
    missing = found.missing()
    if missing:
        page = _missing_page(missing, found.origin)

        async def index(request: web.Request) -> web.StreamResponse:
            return page

    else:
        index_file = found.pages / "index.html"

        async def index(request: web.Request) -> web.StreamResponse:
            return web.FileResponse(index_file, headers={"Cache-Control": "no-cache"})

    app.router.add_get("/", index)
    if found.pages.is_dir():
        app.router.add_static("/static", found.pages)
    if found.vendor.is_dir():
        app.router.add_static("/vendor/socket.io-client", found.vendor)
