"""Completion webhooks: who may be called, how a call is signed, how retries back off.

Both sides use this module: the gateway checks a ``callback_url`` when a task is submitted
(422 when refused), the worker checks it again at delivery time against the addresses the name
resolves to *then* (a name that pointed at a public address at submit time may point at
127.0.0.1 by the time the task ends: DNS rebinding). docs/WEBHOOKS.md has the whole story.

The delivery state lives in the task's snapshot under ``webhook``::

    {"url": "...", "state": "pending" | "delivered" | "failed", "attempts": 0,
     "last_status": null, "last_error": null, "updated_at": null}
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import random
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import SplitResult, urlsplit

from shared.settings import Settings

SIGNATURE_HEADER = "X-Taskgate-Signature"
TIMESTAMP_HEADER = "X-Taskgate-Timestamp"
TASK_HEADER = "X-Taskgate-Task-Id"
ATTEMPT_HEADER = "X-Taskgate-Attempt"
MAX_URL_LENGTH = 2048

WebhookStateName = Literal["pending", "delivered", "failed"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class WebhookRefused(ValueError):
    """The URL (or an address it resolves to) is not one taskgate may call."""


def _ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def is_public_address(addr: IPAddress) -> bool:
    """True for an address on the public internet: not loopback, private, link-local, etc."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    return bool(
        addr.is_global
        and not addr.is_multicast
        and not addr.is_reserved
        and not addr.is_unspecified
        and not addr.is_loopback
        and not addr.is_link_local
        and not addr.is_private
    )


@dataclass(frozen=True, slots=True)
class WebhookPolicy:
    """Which callback URLs are allowed: hosts on the allowlist, never private addresses.

    An allowlist entry is a host name (``hooks.example.com``), ``*.example.com`` for any name
    below ``example.com``, or an IP address. ``allow_private`` (tests, closed networks) lifts
    the ban on loopback, private and link-local addresses; the allowlist still applies.
    """

    allowed_hosts: tuple[str, ...] = ()
    allow_private: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookPolicy:
        return cls(
            tuple(h.lower().rstrip(".") for h in settings.webhook_allowed_hosts),
            settings.webhook_allow_private,
        )

    def host_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        for entry in self.allowed_hosts:
            if entry.startswith("*."):
                if host.endswith(entry[1:]) and len(host) > len(entry) - 1:
                    return True
            elif host == entry:
                return True
        return False

    def address_allowed(self, addr: IPAddress) -> bool:
        if self.allow_private:
            return not (addr.is_unspecified or addr.is_multicast)
        return is_public_address(addr)

    def check_url(self, url: Any) -> SplitResult:
        """The parsed URL if it may be called, else ``WebhookRefused`` saying why."""
        if not isinstance(url, str) or not 0 < len(url) <= MAX_URL_LENGTH:
            raise WebhookRefused(f"must be a URL of at most {MAX_URL_LENGTH} characters")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise WebhookRefused("is not a valid URL") from None
        if parts.scheme not in ("http", "https"):
            raise WebhookRefused("must be an http:// or https:// URL")
        if parts.username is not None or parts.password is not None:
            raise WebhookRefused("must not carry credentials")
        host = (parts.hostname or "").rstrip(".")
        if not host:
            raise WebhookRefused("has no host")
        if port == 0:
            raise WebhookRefused("has an invalid port")
        if not self.allowed_hosts:
            raise WebhookRefused("is not accepted: no webhook hosts are allowed on this gateway")
        if not self.host_allowed(host):
            raise WebhookRefused(f"host {host[:100]!r} is not on the webhook allowlist")
        addr = _ip(host)
        if addr is not None and not self.address_allowed(addr):
            raise WebhookRefused("points to a loopback, private or link-local address")
        return parts

    def check_addresses(self, addresses: list[str]) -> None:
        """Refuse unless every address a host resolved to is allowed (delivery time)."""
        if not addresses:
            raise WebhookRefused("host did not resolve")
        for raw in addresses:
            addr = _ip(raw.split("%", 1)[0])
            if addr is None or not self.address_allowed(addr):
                raise WebhookRefused(f"host resolves to a disallowed address ({raw})")


def signing_secret(settings: Settings) -> bytes | None:
    """``TASKGATE_WEBHOOK_SECRET``, else ``TASKGATE_SECRET``."""
    secret = settings.webhook_secret or settings.secret
    return secret.get().encode() if secret is not None else None


def sign(secret: bytes, body: bytes) -> str:
    """The signature header's value: ``sha256=`` and the hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, header: str | None) -> bool:
    """What a receiver does: compare in constant time."""
    return header is not None and hmac.compare_digest(sign(secret, body), header)


def backoff_delay(attempts: int, base: float, cap: float) -> float:
    """Seconds before the next try after ``attempts`` failed ones: exponential, jittered, capped."""
    ceiling = min(cap, base * (2 ** max(0, attempts - 1)))
    return random.uniform(ceiling / 2, ceiling)


def initial_state(url: str) -> dict[str, Any]:
    return {
        "url": url,
        "state": "pending",
        "attempts": 0,
        "last_status": None,
        "last_error": None,
        "updated_at": None,
    }


def webhook_fields(url: str | None) -> dict[str, Any] | None:
    """The record fields a submission with ``callback_url`` adds (``None`` without one)."""
    return {"webhook": initial_state(url)} if url is not None else None
