"""The sentinel URL syntax (shared/sentinel.py): what a good URL yields, what Celery is handed,
and the one-line error of a bad one (at start, naming the variable, without the password)."""

from __future__ import annotations

import ssl

import pytest

from shared.celery_config import celery_config
from shared.errors import ConfigError
from shared.sentinel import SentinelURLError, is_sentinel_url, parse_sentinel_url
from shared.settings import Settings
from tests.support import offline_env

THREE = "redis+sentinel://:s3cret@h1:26379,h2:26380,h3/mymaster/2"


def test_three_sentinels_password_and_db() -> None:
    url = parse_sentinel_url(THREE)
    assert url.sentinels == (("h1", 26379), ("h2", 26380), ("h3", 26379))
    assert (url.master, url.db, url.username, url.password) == ("mymaster", 2, None, "s3cret")
    assert url.tls is False and url.sentinel_password is None
    assert "s3cret" not in repr(url) and "s3cret" not in str(url)
    assert url.master_kwargs() == {"db": 2, "password": "s3cret"}
    assert url.sentinel_kwargs() == {}  # the sentinels are asked without the master's password
    assert url.master_url("10.0.0.5", 6380) == "redis://:s3cret@10.0.0.5:6380/2"


def test_defaults_user_sentinel_credentials_and_ipv6() -> None:
    url = parse_sentinel_url(
        "redis+sentinel://app:p%40ss@[::1]:5000,h2/svc"
        "?sentinel_username=watch&sentinel_password=w%26rd"
    )
    assert url.sentinels == (("::1", 5000), ("h2", 26379))
    assert (url.master, url.db, url.username, url.password) == ("svc", 0, "app", "p@ss")
    assert url.sentinel_kwargs() == {"username": "watch", "password": "w&rd"}
    assert url.master_url("::1", 7000) == "redis://app:p%40ss@[::1]:7000/0"
    # A password alone, as redis-py reads ``redis://secret@host``.
    assert parse_sentinel_url("redis+sentinel://secret@h/m").password == "secret"


def test_tls_options_reach_master_and_sentinels() -> None:
    url = parse_sentinel_url("rediss+sentinel://h1/m/1?ssl_cert_reqs=none&ssl_ca_certs=/etc/ca.pem")
    assert url.tls is True
    expected = {"ssl": True, "ssl_cert_reqs": ssl.CERT_NONE, "ssl_ca_certs": "/etc/ca.pem"}
    assert url.sentinel_kwargs() == expected
    assert url.master_kwargs() == {"db": 1, **expected}
    assert (
        url.master_url("h", 1) == "rediss://h:1/1?ssl_cert_reqs=none&ssl_ca_certs=%2Fetc%2Fca.pem"
    )
    assert url.kombu_ssl() == {"ssl_cert_reqs": ssl.CERT_NONE, "ssl_ca_certs": "/etc/ca.pem"}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://h1,h2", "no master name"),
        ("redis+sentinel://h1,h2/", "no master name"),
        ("redis+sentinel://h1/m/x", "database 'x' is not a number"),
        ("redis+sentinel://h1/m/0/extra", "too many path parts"),
        ("redis+sentinel://h1,,h2/m", "a sentinel address is empty"),
        ("redis+sentinel://h1:0/m", "port must be 1-65535"),
        ("redis+sentinel://h1:99999/m", "port must be 1-65535"),
        ("redis+sentinel://h1:abc/m", "port must be 1-65535"),
        ("redis+sentinel://:26379/m", "has no host"),
        ("redis+sentinel://[::1/m", "is not \\[ipv6\\]:port"),
        ("redis+sentinel://h1/m?socket_timeout=1", "unknown option 'socket_timeout'"),
        ("redis+sentinel://h1/m?ssl_ca_certs=/ca", "needs rediss\\+sentinel://"),
        ("rediss+sentinel://h1/m?ssl_cert_reqs=maybe", "ssl_cert_reqs 'maybe'"),
        ("sentinel://h1:26379;sentinel://h2:26379", "cannot name the master"),
        ("redis://h1/0", "must start with"),
    ],
)
def test_bad_urls_say_why(url: str, message: str) -> None:
    with pytest.raises(SentinelURLError, match=message):
        parse_sentinel_url(url)


def test_is_sentinel_url_looks_at_the_scheme_only() -> None:
    assert is_sentinel_url("redis+sentinel://h/m") and is_sentinel_url("REDISS+SENTINEL://h/m")
    assert not is_sentinel_url("redis://h/0") and not is_sentinel_url(None)
    assert not is_sentinel_url("sentinel://h:26379")


@pytest.mark.parametrize(
    "variable", ["TASKGATE_REDIS_URL", "CELERY_BROKER_URL", "CELERY_BACKEND_URL"]
)
def test_settings_accept_the_syntax_and_refuse_a_bad_one_naming_the_variable(
    variable: str,
) -> None:
    field = {"TASKGATE_REDIS_URL": "redis_url", "CELERY_BROKER_URL": "broker_url"}
    assert (
        getattr(
            Settings.from_env(offline_env(**{variable: THREE})), field.get(variable, "backend_url")
        )
        == THREE
    )
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(offline_env(**{variable: "redis+sentinel://:s3cret@h1/m/zero"}))
    assert str(caught.value) == f"{variable}: database 'zero' is not a number"
    with pytest.raises(ConfigError, match=f"^{variable}: kombu's sentinel://"):
        Settings.from_env(offline_env(**{variable: "sentinel://:s3cret@h1;sentinel://h2"}))


def test_a_refused_url_does_not_show_its_password() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(offline_env(TASKGATE_REDIS_URL="memcache://u:s3cret@h/0"))
    assert "s3cret" not in str(caught.value) and "u:***@h" in str(caught.value)


def test_celery_gets_kombus_form_derived_from_the_redis_url() -> None:
    """Only TASKGATE_REDIS_URL set: broker and result backend are its sentinels, in kombu's
    and Celery's own form, with the master's name in their transport options."""
    settings = Settings.from_env(offline_env(TASKGATE_REDIS_URL=THREE))
    conf = celery_config(settings)
    kombu = (
        "sentinel://:s3cret@h1:26379/2;sentinel://:s3cret@h2:26380/2;sentinel://:s3cret@h3:26379/2"
    )
    assert conf["broker_url"] == kombu and conf["result_backend"] == kombu
    assert conf["broker_transport_options"]["master_name"] == "mymaster"
    assert conf["broker_transport_options"]["global_keyprefix"] == settings.keys.broker_prefix
    assert conf["result_backend_transport_options"]["master_name"] == "mymaster"
    assert (
        "broker_use_ssl" not in conf and "sentinel_kwargs" not in conf["broker_transport_options"]
    )
    # The gateway's own clients keep taskgate's syntax (shared.redis_client reads it).
    assert settings.effective_broker_url == THREE


def test_a_broker_of_its_own_with_sentinel_credentials() -> None:
    broker = "redis+sentinel://b1,b2/jobs/0?sentinel_password=w"
    settings = Settings.from_env(
        offline_env(TASKGATE_REDIS_URL="redis://127.0.0.1:1/0", CELERY_BROKER_URL=broker)
    )
    conf = celery_config(settings)
    assert conf["broker_url"] == "sentinel://b1:26379/0;sentinel://b2:26379/0"
    assert conf["broker_transport_options"]["master_name"] == "jobs"
    assert conf["broker_transport_options"]["sentinel_kwargs"] == {"password": "w"}
    assert conf["result_backend"] == "redis://127.0.0.1:1/0"
    assert "master_name" not in conf["result_backend_transport_options"]
