"""Tokens: JWT, HS256 only, ``sub`` (the user id) and ``exp`` required.

The algorithm is pinned: the header must say ``HS256`` before the signature is even looked at,
so ``alg: none``, RS256/HS512 confusions and the like are refused with a message that says so.
``sub`` must be text that encodes to UTF-8 (no lone surrogates), at most ``MAX_USER_LEN``
characters. ``aud`` and ``iss`` are checked when ``TASKGATE_TOKEN_AUDIENCE`` /
``TASKGATE_TOKEN_ISSUER`` are set. A small leeway absorbs clock skew between whoever issues
tokens and the gateway.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt

from shared.errors import AuthError
from shared.settings import Secret, Settings

ALGORITHM = "HS256"
LEEWAY_S = 5
MAX_USER_LEN = 128
MAX_TOKEN_LEN = 8192


@dataclass(frozen=True, slots=True)
class Identity:
    user: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class TokenRules:
    """What a token must satisfy besides the signature: optional audience and issuer."""

    audience: str | None = None
    issuer: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenRules:
        return cls(audience=settings.token_audience, issuer=settings.token_issuer)


NO_RULES = TokenRules()


def issue_token(
    secret: Secret, user: str, ttl_s: float = 24 * 3600, rules: TokenRules = NO_RULES
) -> str:
    """A signed token for ``user``, carrying the configured ``aud``/``iss`` if any."""
    now = int(time.time())
    payload: dict[str, Any] = {"sub": user, "iat": now, "exp": now + int(ttl_s)}
    if rules.audience is not None:
        payload["aud"] = rules.audience
    if rules.issuer is not None:
        payload["iss"] = rules.issuer
    return jwt.encode(payload, secret.get(), algorithm=ALGORITHM)


def verify_token(secret: Secret, token: object, rules: TokenRules = NO_RULES) -> Identity:
    """Check a token and return who it names; ``AuthError`` says what is wrong."""
    if not isinstance(token, str) or not token:
        raise AuthError("missing token")
    if len(token) > MAX_TOKEN_LEN:
        raise AuthError("invalid token: too long")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise AuthError("invalid token: not a JWT") from None
    alg = header.get("alg")
    if alg != ALGORITHM:
        shown = alg[:20] if isinstance(alg, str) else type(alg).__name__
        raise AuthError(f"invalid token: algorithm {shown!r} is not accepted (only HS256)")
    required = ["sub", "exp"]
    if rules.audience is not None:
        required.append("aud")
    if rules.issuer is not None:
        required.append("iss")
    try:
        claims = jwt.decode(
            token,
            secret.get(),
            algorithms=[ALGORITHM],
            options={"require": required, "verify_aud": rules.audience is not None},
            audience=rules.audience,
            issuer=rules.issuer,
            leeway=LEEWAY_S,
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("token expired") from None
    except jwt.MissingRequiredClaimError as exc:
        raise AuthError(f"token lacks the {exc.claim!r} claim") from None
    except jwt.InvalidAudienceError:
        raise AuthError("token is for another audience") from None
    except jwt.InvalidIssuerError:
        raise AuthError("token is from another issuer") from None
    except jwt.InvalidSignatureError:
        raise AuthError("invalid token: bad signature") from None
    except jwt.InvalidTokenError as exc:
        raise AuthError(f"invalid token: {str(exc)[:100]}") from None
    sub = claims["sub"]
    if not isinstance(sub, str) or not sub or len(sub) > MAX_USER_LEN:
        raise AuthError("token 'sub' must be a non-empty string of at most 128 characters")
    try:
        # JSON text may escape a lone surrogate ("\ud800"); such a str cannot be encoded, so
        # it would fail wherever the user id is written (a Redis key, a log line) as a 500.
        sub.encode("utf-8")
    except UnicodeEncodeError:
        raise AuthError("token 'sub' must be valid UTF-8 text (no lone surrogates)") from None
    exp = claims["exp"]
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        raise AuthError("token 'exp' must be a number")
    return Identity(user=sub, expires_at=float(exp))


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


class VerifiedTokens:
    """Tokens already verified, kept briefly so HTTP requests don't re-check the same token.

    A browser or service sends the same bearer token with every call; checking its HMAC and
    claims each time is a tenth of a submit's cost. A token that verified is remembered for at
    most ``ttl_s`` and never past its own expiry; a token that failed is not remembered.
    """

    def __init__(
        self, secret: Secret, rules: TokenRules, ttl_s: float = 60.0, size: int = 10_000
    ) -> None:
        self.secret = secret
        self.rules = rules
        self.ttl_s = ttl_s
        self.size = size
        self._known: dict[str, tuple[float, Identity]] = {}

    def verify(self, token: object) -> Identity:
        now = time.time()
        if isinstance(token, str):
            hit = self._known.get(token)
            if hit is not None:
                until, identity = hit
                if now < until:
                    return identity
                del self._known[token]
        identity = verify_token(self.secret, token, self.rules)
        assert isinstance(token, str)
        if len(self._known) >= self.size:
            # Drop the oldest entry (dicts keep insertion order).
            self._known.pop(next(iter(self._known)))
        self._known[token] = (min(now + self.ttl_s, identity.expires_at + LEEWAY_S), identity)
        return identity
