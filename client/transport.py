"""HTTP to the gateway: one aiohttp session, the bearer token, JSON both ways, errors as the
client's exceptions (``client.errors``) and retries by the caller's ``RetryPolicy``."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson

from client.errors import (
    ConnectionLost,
    GatewayUnreachable,
    TaskgateError,
    error_from,
    parse_retry_after,
)
from client.retry import RetryPolicy

USER_AGENT = "taskgate-client/0.1"


class Transport:
    """Requests to the gateway at ``url`` with ``token``; the session is made on first use
    (inside the running loop) and closed by ``close``."""

    def __init__(
        self, url: str, token: str, retry: RetryPolicy | None = None, timeout: float = 30.0
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.retry = retry
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {self.token}", "User-Agent": USER_AGENT}
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        extra_time: float = 0.0,
        retry: bool = True,
    ) -> Any:
        """``method path`` with ``body`` as JSON; the answer's JSON, or the error it carries
        raised. Refusals that the policy covers are retried unless ``retry`` is false."""
        attempt = 0
        while True:
            try:
                return await self._once(method, path, body, params, headers, extra_time)
            except TaskgateError as exc:
                policy = self.retry if retry else None
                if policy is None or not policy.retries(exc, attempt):
                    raise
                await asyncio.sleep(policy.delay(attempt, getattr(exc, "retry_after", None)))
                attempt += 1

    async def _once(
        self,
        method: str,
        path: str,
        body: Any,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
        extra_time: float,
    ) -> Any:
        sent_headers = dict(headers or {})
        data: bytes | None = None
        if body is not None:
            data = orjson.dumps(body)
            sent_headers["Content-Type"] = "application/json"
        timeout = aiohttp.ClientTimeout(total=self.timeout + extra_time)
        try:
            async with self.session().request(
                method,
                self.url + path,
                data=data,
                params=params,
                headers=sent_headers,
                timeout=timeout,
            ) as resp:
                raw = await resp.read()
                status = resp.status
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        except aiohttp.ClientConnectorError as exc:
            raise GatewayUnreachable(f"cannot connect to {self.url}: {exc.os_error}") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            what = type(exc).__name__ if not str(exc) else str(exc)
            raise ConnectionLost(f"{method} {path}: {what}") from None
        try:
            answer = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            answer = None
        if status < 300:
            if answer is None and raw:
                raise TaskgateError(
                    f"{method} {path}: the answer is not JSON", code="bad_answer", status=status
                )
            return answer
        raise error_from(answer, status, retry_after)
