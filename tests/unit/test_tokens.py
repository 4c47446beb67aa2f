"""Token checks without a server (``gateway.auth``)."""

from __future__ import annotations

import pytest

from gateway.auth import TokenRules, issue_token
from shared.settings import Secret
from tests.support import (
    SECRET,
)


def test_verified_token_cache_never_outlives_the_token() -> None:
    """HTTP remembers verified tokens briefly; an expired one is refused even if remembered,
    and a token that failed is never remembered."""
    import time as _time

    from gateway.auth import LEEWAY_S, VerifiedTokens
    from shared.errors import AuthError

    tokens = VerifiedTokens(Secret(SECRET), TokenRules(), ttl_s=60.0)
    short = issue_token(Secret(SECRET), "cache-user", ttl_s=1)
    assert tokens.verify(short).user == "cache-user"
    assert tokens.verify(short).user == "cache-user"  # from the cache
    forged = short[:-2] + ("AA" if not short.endswith("AA") else "BB")
    for _ in range(2):
        with pytest.raises(AuthError, match="signature"):
            tokens.verify(forged)
    _time.sleep(1 + LEEWAY_S + 0.3)
    with pytest.raises(AuthError, match="expired"):
        tokens.verify(short)
