"""Redis Sentinel URLs, parsed in one place, and the master they point to.

redis-py reads ``redis://``, ``rediss://`` and ``unix://`` URLs but has no URL for a Sentinel
deployment. taskgate takes the convention that Redis-Sentinel-Url, LangChain, RedisVL and
Prefect share, for ``TASKGATE_REDIS_URL``, ``CELERY_BROKER_URL`` and ``CELERY_BACKEND_URL``::

    redis+sentinel://[[user]:password@]host1[:port1][,host2[:port2],...]/master_name[/db][?options]
    rediss+sentinel://...   (TLS to the data nodes and to the sentinels)

A sentinel's port defaults to 26379. The user and password are the data nodes' (the master's);
``sentinel_username`` and ``sentinel_password`` authenticate to the sentinels, which are asked
without credentials otherwise. On ``rediss+sentinel://`` the ``ssl_cert_reqs``,
``ssl_ca_certs``, ``ssl_certfile`` and ``ssl_keyfile`` options apply to both. Any other
option is refused: a typo must not be ignored.

Celery is handed kombu's own form, built here (``kombu_url``, ``kombu_options``): one
``sentinel://`` URL per sentinel, joined by ``;``, with ``master_name`` in the transport
options. That form is not accepted as input: it cannot name the master.

``master_address`` asks the sentinels in turn for the master's address
(``SENTINEL get-master-addr-by-name``), as the hand-written clients (``shared.resp``,
``gateway.live.subscriber``) do on every (re)connect; ``check_role`` is what they do with the
answer to ``ROLE`` on the new connection (a replica is a failed connect).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

import redis.asyncio as aioredis
from redis.driver_info import DriverInfo
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.utils import get_lib_version

# As in ``shared.redis_client``: told its version, redis-py reads no package metadata (blocking
# file I/O) when it opens a connection to a sentinel on the event loop.
_DRIVER = DriverInfo(name="redis-py", lib_version=get_lib_version())  # type: ignore[no-untyped-call]

SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
# Kombu's and Celery's own form: recognised only to say what to write instead.
KOMBU_SCHEME = "sentinel://"
DEFAULT_SENTINEL_PORT = 26379
SSL_OPTIONS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
_OPTIONS = ("sentinel_username", "sentinel_password", *SSL_OPTIONS)
_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
SYNTAX = "redis+sentinel://[:password@]host1:26379,host2:26379,host3:26379/master_name[/db]"


class SentinelURLError(ValueError):
    """A sentinel URL that cannot be used; the message says why (without the password)."""


def is_sentinel_url(url: str | None) -> bool:
    """Whether ``url`` is taskgate's sentinel syntax (only the scheme is looked at)."""
    return url is not None and url[:20].lower().startswith(SCHEMES)


@dataclass(frozen=True)
class SentinelURL:
    """What a sentinel URL says. ``repr`` leaves the passwords out."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    tls: bool = False
    ssl: tuple[tuple[str, str], ...] = ()

    def __repr__(self) -> str:
        hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
        scheme = SCHEMES[1] if self.tls else SCHEMES[0]
        return f"SentinelURL({scheme}{hosts}/{self.master}/{self.db})"

    __str__ = __repr__

    def ssl_kwargs(self) -> dict[str, Any]:
        """redis-py's keyword arguments for TLS (empty without it)."""
        if not self.tls:
            return {}
        out: dict[str, Any] = {"ssl": True}
        for key, value in self.ssl:
            out[key] = _CERT_REQS[value] if key == "ssl_cert_reqs" else value
        return out

    def master_kwargs(self) -> dict[str, Any]:
        """redis-py's connection arguments for the master (``Sentinel(**these)``)."""
        out: dict[str, Any] = {"db": self.db, **self.ssl_kwargs()}
        if self.username:
            out["username"] = self.username
        if self.password:
            out["password"] = self.password
        return out

    def sentinel_kwargs(self, **socket: Any) -> dict[str, Any]:
        """redis-py's connection arguments for a sentinel (``Sentinel(sentinel_kwargs=)``)."""
        out: dict[str, Any] = {**socket, **self.ssl_kwargs()}
        if self.sentinel_username:
            out["username"] = self.sentinel_username
        if self.sentinel_password:
            out["password"] = self.sentinel_password
        return out

    def master_url(self, host: str, port: int) -> str:
        """A plain ``redis://`` (or ``rediss://``) URL for the master found at ``host:port``,
        for a client that reads URLs (``shared.resp``)."""
        auth = ""
        if self.password:
            auth = f"{quote(self.username or '', safe='')}:{quote(self.password, safe='')}@"
        query = "&".join(f"{k}={quote(v, safe='')}" for k, v in self.ssl)
        scheme = "rediss" if self.tls else "redis"
        netloc = f"[{host}]" if ":" in host else host
        return f"{scheme}://{auth}{netloc}:{port}/{self.db}" + (f"?{query}" if query else "")

    def kombu_url(self) -> str:
        """kombu's and Celery's form: ``sentinel://[:password@]host:port/db`` per sentinel,
        joined by ``;`` (the first one's credentials and db are the master's)."""
        auth = ""
        if self.password:
            auth = f"{quote(self.username or '', safe='')}:{quote(self.password, safe='')}@"
        parts = []
        for host, port in self.sentinels:
            netloc = f"[{host}]" if ":" in host else host
            parts.append(f"sentinel://{auth}{netloc}:{port}/{self.db}")
        return ";".join(parts)

    def kombu_options(self) -> dict[str, Any]:
        """The transport options kombu's sentinel transport (and Celery's sentinel result
        backend) need beside ``kombu_url``."""
        options: dict[str, Any] = {"master_name": self.master}
        sentinel_kwargs = self.sentinel_kwargs()
        if sentinel_kwargs:
            options["sentinel_kwargs"] = sentinel_kwargs
        return options

    def kombu_ssl(self) -> dict[str, Any] | None:
        """``broker_use_ssl`` / ``redis_backend_use_ssl`` for TLS to the master, else None."""
        if not self.tls:
            return None
        out = self.ssl_kwargs()
        out.pop("ssl")
        out.setdefault("ssl_cert_reqs", ssl.CERT_REQUIRED)
        return out


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse taskgate's sentinel syntax (module docstring); ``SentinelURLError`` says what is
    wrong."""
    lowered = url[:20].lower()
    if not lowered.startswith(SCHEMES):
        if lowered.startswith(KOMBU_SCHEME):
            raise SentinelURLError(
                "kombu's sentinel://host;sentinel://host form cannot name the master; "
                f"write {SYNTAX}"
            )
        raise SentinelURLError(f"must start with {' or '.join(SCHEMES)}")
    tls = lowered.startswith(SCHEMES[1])
    rest = url.split("://", 1)[1]
    rest, _, query = rest.partition("?")
    rest, _, _fragment = rest.partition("#")
    userinfo, at, hostpart = rest.rpartition("@")
    if not at:
        userinfo, hostpart = "", rest
    hosts, slash, path = hostpart.partition("/")
    sentinels = tuple(_sentinel_address(item) for item in hosts.split(","))
    segments = path.split("/") if slash else []
    if segments and segments[-1] == "":
        segments.pop()  # a trailing slash
    if not segments or not segments[0]:
        raise SentinelURLError(f"no master name: write {SYNTAX}")
    if len(segments) > 2:
        raise SentinelURLError(f"too many path parts {path!r}: write {SYNTAX}")
    master = unquote(segments[0])
    db = 0
    if len(segments) == 2:
        if not segments[1].isdigit():
            raise SentinelURLError(f"database {segments[1]!r} is not a number")
        db = int(segments[1])
    username = password = None
    if at:
        user_raw, colon, pass_raw = userinfo.partition(":")
        username = unquote(user_raw) or None
        password = unquote(pass_raw) if colon else None
        if not colon:  # ``redis://secret@host`` means a password, as redis-py reads it
            username, password = None, unquote(user_raw) or None
    options: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in _OPTIONS:
            raise SentinelURLError(f"unknown option {key!r} (known: {', '.join(_OPTIONS)})")
        options[key] = value
    ssl_opts = tuple((k, options[k]) for k in SSL_OPTIONS if k in options)
    if ssl_opts and not tls:
        raise SentinelURLError(f"{ssl_opts[0][0]} needs rediss+sentinel:// (TLS)")
    reqs = options.get("ssl_cert_reqs")
    if reqs is not None and reqs not in _CERT_REQS:
        raise SentinelURLError(f"ssl_cert_reqs {reqs!r} must be one of {', '.join(_CERT_REQS)}")
    return SentinelURL(
        sentinels=sentinels,
        master=master,
        db=db,
        username=username,
        password=password,
        sentinel_username=options.get("sentinel_username") or None,
        sentinel_password=options.get("sentinel_password") or None,
        tls=tls,
        ssl=ssl_opts,
    )


def _sentinel_address(item: str) -> tuple[str, int]:
    item = item.strip()
    if not item:
        raise SentinelURLError(f"a sentinel address is empty: write {SYNTAX}")
    if item.startswith("["):  # [IPv6]:port
        host, close, port_raw = item[1:].partition("]")
        if not close or (port_raw and not port_raw.startswith(":")):
            raise SentinelURLError(f"sentinel address {item!r} is not [ipv6]:port")
        port_raw = port_raw[1:]
    else:
        host, _, port_raw = item.partition(":")
    if not host:
        raise SentinelURLError(f"sentinel address {item!r} has no host")
    if not port_raw:
        return host, DEFAULT_SENTINEL_PORT
    if not port_raw.isdigit() or not 0 < int(port_raw) < 65536:
        raise SentinelURLError(f"sentinel address {item!r}: port must be 1-65535")
    return host, int(port_raw)


class MasterNotFound(RedisConnectionError):
    """No sentinel named a master (all unreachable, or none knows the name)."""


async def master_address(config: SentinelURL, timeout: float) -> tuple[str, int]:
    """The master's address as the first sentinel that answers names it
    (``SENTINEL get-master-addr-by-name``); raise ``MasterNotFound`` (a ``ConnectionError``)."""
    problems: list[str] = []
    kwargs = config.sentinel_kwargs(socket_timeout=timeout, socket_connect_timeout=timeout)
    for host, port in config.sentinels:
        client = aioredis.Redis(host=host, port=port, driver_info=_DRIVER, **kwargs)
        try:
            reply = await client.execute_command(  # type: ignore[no-untyped-call]
                "SENTINEL", "GET-MASTER-ADDR-BY-NAME", config.master
            )
        except (RedisError, OSError) as exc:
            problems.append(f"{host}:{port}: {type(exc).__name__}")
            continue
        finally:
            await client.aclose()
        if reply:
            master_host, master_port = reply[0], reply[1]
            if isinstance(master_host, bytes):
                master_host = master_host.decode()
            return str(master_host), int(master_port)
        problems.append(f"{host}:{port}: does not know {config.master!r}")
    raise MasterNotFound(f"no master {config.master!r} from the sentinels ({'; '.join(problems)})")


def check_role(reply: Any, where: str) -> None:
    """Raise ``ConnectionError`` unless ``reply`` (to ``ROLE``) says master: a connect that
    reached a replica (a stale address during a failover) has failed."""
    role = reply[0] if isinstance(reply, list) and reply else reply
    if role != b"master":
        shown = role.decode() if isinstance(role, bytes) else repr(role)
        raise RedisConnectionError(f"{where} is a {shown}, not the master")
