"""Which webhook addresses are allowed (``shared.webhooks.WebhookPolicy``)."""

from __future__ import annotations

import pytest

from shared.webhooks import (
    WebhookPolicy,
    WebhookRefused,
    is_public_address,
)


def test_policy_addresses() -> None:
    policy = WebhookPolicy(("hooks.example.com", "*.example.org"), allow_private=False)
    assert policy.host_allowed("HOOKS.example.com.") and policy.host_allowed("a.b.example.org")
    assert not policy.host_allowed("example.org") and not policy.host_allowed("xexample.org")
    assert not policy.host_allowed("hooks.example.com.evil.net")
    for bad in ["127.0.0.1", "10.0.0.1", "172.16.3.4", "192.168.1.1", "169.254.169.254",
                "100.64.0.1", "0.0.0.0", "::1", "fe80::1", "fc00::1", "::ffff:10.0.0.1",
                "224.0.0.1"]:  # fmt: skip
        with pytest.raises(WebhookRefused):
            policy.check_addresses([bad])
    # One bad address among good ones is enough to refuse (a name can resolve to both).
    with pytest.raises(WebhookRefused):
        policy.check_addresses(["93.184.215.14", "127.0.0.1"])
    policy.check_addresses(["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"])
    import ipaddress

    assert is_public_address(ipaddress.ip_address("8.8.8.8"))
    assert not is_public_address(ipaddress.ip_address("::ffff:127.0.0.1"))
