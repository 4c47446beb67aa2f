"""The web client: ``GET /`` (the page), ``/static/`` (its modules) and
``/vendor/socket.io-client``."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from gateway.http.api import json_response

WEB_DIR = Path(__file__).resolve().parent.parent.parent / "web"
INDEX_PAGE = WEB_DIR / "src" / "index.html"
SOCKETIO_CLIENT_DIR = WEB_DIR / "node_modules" / "socket.io-client" / "dist"


async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(INDEX_PAGE, headers={"Cache-Control": "no-cache"})


async def no_web_client(request: web.Request) -> web.StreamResponse:
    return json_response(
        {"error": {"code": "not_found", "message": "web client not installed"}}, status=404
    )


def add_page_routes(app: web.Application) -> None:
    # Looked up once here, not on the loop for every request.
    app.router.add_get("/", index if INDEX_PAGE.is_file() else no_web_client)
    if (WEB_DIR / "src").is_dir():
        app.router.add_static("/static", WEB_DIR / "src")
    if SOCKETIO_CLIENT_DIR.is_dir():
        app.router.add_static("/vendor/socket.io-client", SOCKETIO_CLIENT_DIR)
