"""Which browser origins may call the gateway: HTTP CORS and the Socket.IO handshake alike.

``CORS_ALLOWED_ORIGINS`` lists them (``*`` allows any); empty means the same origin only, that is
an ``Origin`` whose host and port are the request's ``Host``. The scheme is not compared in that
case, so a gateway behind a TLS-terminating proxy still accepts its own pages. A request with no
``Origin`` header is not a cross-site browser request and passes (tokens still apply).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway.http.api import error_response
from shared.errors import TaskgateError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ALLOW_METHODS = "GET, POST, DELETE, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type"
MAX_AGE_S = "600"


class ForbiddenOrigin(TaskgateError):
    code = "forbidden_origin"
    http_status = 403


class OriginPolicy:
    """Decides whether an ``Origin`` may talk to this gateway."""

    def __init__(self, allowed: tuple[str, ...]) -> None:
        self.any = "*" in allowed
        self.allowed = frozenset(o.rstrip("/").lower() for o in allowed if o != "*")

    def allows(self, origin: str, host: str | None) -> bool:
        origin = origin.strip().rstrip("/").lower()
        if self.any:
            return True
        if self.allowed:
            return origin in self.allowed
        if not host:
            return False
        try:
            netloc = urlsplit(origin).netloc
        except ValueError:
            return False
        return bool(netloc) and netloc == host.strip().lower()

    def engineio_check(self, origin: str | None, environ: Mapping[str, Any]) -> bool:
        """The callable python-engineio takes as ``cors_allowed_origins``.

        python-engineio also calls it with no ``Origin`` (for the CORS headers of a long-poll
        answer): there is nothing to allow then.
        """
        if not isinstance(origin, str):
            return False
        return self.allows(origin, environ.get("HTTP_HOST"))

    def middleware(self) -> Middleware:
        """CORS for the HTTP API: preflights answered here, other origins refused (403).

        Install it outside the error middleware, so error answers carry the CORS headers too.
        """

        @web.middleware
        async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            origin = request.headers.get("Origin")
            # Socket.IO runs its own origin check (the same policy) on its path.
            if origin is None or request.path.startswith("/socket.io/"):
                return await handler(request)
            if not self.allows(origin, request.host):
                return error_response(ForbiddenOrigin(f"origin {origin[:100]!r} is not allowed"))
            headers = {
                "Access-Control-Allow-Origin": origin,
                "Vary": "Origin",
            }
            if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
                headers.update(
                    {
                        "Access-Control-Allow-Methods": ALLOW_METHODS,
                        "Access-Control-Allow-Headers": ALLOW_HEADERS,
                        "Access-Control-Max-Age": MAX_AGE_S,
                    }
                )
                return web.Response(status=204, headers=headers)
            response = await handler(request)
            response.headers.update(headers)
            response.headers["Access-Control-Expose-Headers"] = "Retry-After"
            return response

        return cors_middleware
