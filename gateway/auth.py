"""Tokens: JWT, HS256 only, ``sub`` (the user id) and ``exp`` required."""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

from shared.errors import AuthError
from shared.settings import Secret

ALGORITHM = "HS256"
LEEWAY_S = 5
MAX_USER_LEN = 128


@dataclass(frozen=True, slots=True)
class Identity:
    user: str
    expires_at: float


def issue_token(secret: Secret, user: str, ttl_s: float = 24 * 3600) -> str:
    now = int(time.time())
    payload = {"sub": user, "iat": now, "exp": now + int(ttl_s)}
    return jwt.encode(payload, secret.get(), algorithm=ALGORITHM)


def verify_token(secret: Secret, token: object) -> Identity:
    """Check a token and return who it names; ``AuthError`` says what is wrong."""
    if not isinstance(token, str) or not token:
        raise AuthError("missing token")
    try:
        claims = jwt.decode(
            token,
            secret.get(),
            algorithms=[ALGORITHM],
            options={"require": ["sub", "exp"]},
            leeway=LEEWAY_S,
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("token expired") from None
    except jwt.MissingRequiredClaimError as exc:
        raise AuthError(f"token lacks the {exc.claim!r} claim") from None
    except jwt.InvalidTokenError as exc:
        raise AuthError(f"invalid token: {exc}") from None
    sub = claims["sub"]
    if not isinstance(sub, str) or not sub or len(sub) > MAX_USER_LEN:
        raise AuthError("token 'sub' must be a non-empty string of at most 128 characters")
    return Identity(user=sub, expires_at=float(claims["exp"]))


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None
