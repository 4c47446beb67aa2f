"""Settings, read once from the environment (see the configuration table in the README).

``Settings.from_env()`` either returns a complete, checked object or raises ``ConfigError`` whose
message is one line naming the variable and what is wrong with it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from shared.beat import BeatEntry, parse_schedule
from shared.errors import ConfigError
from shared.keys import Keys
from shared.sentinel import KOMBU_SCHEME, SCHEMES, SentinelURLError, parse_sentinel_url

T = TypeVar("T")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

MIN_SECRET_BYTES = 32
# Default gap between the hard time limit and the broker's visibility timeout: a message must
# not become visible again while the task that holds it may still legitimately be running.
VISIBILITY_MARGIN_S = 60.0
# The submit bucket's default size: the largest batch the API takes (``POST /api/tasks/batch``),
# so any batch within the limits can be accepted at once by a user whose bucket is full.
SUBMIT_BURST_DEFAULT = 10_000
# What a yes/no variable may say (any case), and what each means.
_FLAGS = {"0": False, "1": True, "FALSE": False, "TRUE": True, "NO": False, "YES": True}


class Secret:
    """A string that never shows itself in ``repr`` or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Settings:
    redis_url: str | None = None
    broker_url: str | None = None
    backend_url: str | None = None
    secret: Secret | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    cors_allowed_origins: tuple[str, ...] = ()
    soft_time_limit: float = 300.0
    time_limit: float = 600.0
    worker_concurrency: int | None = None
    prefetch_multiplier: int = 1
    # Recycle a pool process after so many tasks / above so much resident memory (KiB).
    max_tasks_per_child: int | None = None
    max_memory_per_child_kib: int | None = None
    # Celery's ``task_send_sent_event``: producers (the gateway's included) announce what they
    # publish as ``task-sent`` events, for Flower.
    task_send_sent_event: bool = True
    submit_rate: float = 50.0
    # Tokens the submit bucket holds when full: the most one user may submit at once (a batch,
    # a workflow). ``None``: MAX_BATCH_DEFAULT, the largest batch the API takes.
    submit_burst: int | None = None
    max_active: int = 1000
    redis_pool_size: int = 100
    # Owner of tasks sent with Celery's own API and no ``taskgate_user`` header (worker.adopt).
    service_user: str = "service"
    redis_pool_timeout_s: float = 5.0
    retention_s: int = 86400
    key_prefix: str = "taskgate:"
    task_modules: tuple[str, ...] = ("worker.demo",)
    log_level: str = "INFO"
    # ``text`` (readable lines) or ``json`` (one object per line: shared.logs).
    log_format: str = "text"
    # A worker's metrics server (worker.metrics): its port (0: none), host, and the directory
    # prometheus-client's multiprocess mode keeps the pool's counts in.
    worker_metrics_port: int = 0
    # A gateway's /metrics alone on this port too (with --processes N: process n on port+n-1).
    gateway_metrics_port: int = 0
    # Progress updates published per second per task, at most (worker.context); 0: every one.
    progress_rate: float = 20.0
    # A task's result, JSON-encoded, at most this many bytes (a larger one ends the task FAILED).
    max_result_bytes: int = 1024 * 1024
    worker_metrics_host: str = "127.0.0.1"
    metrics_dir: str | None = None
    heartbeat_s: float = 15.0
    max_body_bytes: int = 1024 * 1024
    data_dir: str = ".taskgate"
    token_audience: str | None = None
    token_issuer: str | None = None
    socket_event_rate: float = 20.0
    # Seconds an Engine.IO connection may stay without a Socket.IO CONNECT; ``0``: no limit.
    socket_connect_timeout_s: float = 5.0
    queues: tuple[str, ...] = ("fast", "heavy")
    routes: tuple[tuple[str, str], ...] = ()
    beat_schedule: tuple[BeatEntry, ...] = (BeatEntry("taskgate.sweep", every_s=300.0),)
    # Reliability (docs/RELIABILITY.md). ``None``: the hard time limit plus VISIBILITY_MARGIN_S.
    visibility_timeout_s: float | None = None
    max_attempts: int = 3
    task_heartbeat_s: float = 5.0
    # Completion webhooks (docs/WEBHOOKS.md).
    webhook_secret: Secret | None = None
    webhook_allowed_hosts: tuple[str, ...] = ()
    webhook_allow_private: bool = False
    webhook_max_attempts: int = 8
    webhook_backoff_s: float = 5.0
    webhook_backoff_max_s: float = 300.0
    webhook_timeout_s: float = 10.0
    keys: Keys = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", Keys(self.key_prefix))

    @property
    def visibility_timeout(self) -> float:
        """Seconds before the Redis broker hands an un-acked message to another worker."""
        if self.visibility_timeout_s is not None:
            return self.visibility_timeout_s
        return self.time_limit + VISIBILITY_MARGIN_S

    @property
    def effective_submit_burst(self) -> float:
        """The submit bucket's size (``TASKGATE_SUBMIT_BURST``, else ``SUBMIT_BURST_DEFAULT``)."""
        return float(self.submit_burst if self.submit_burst is not None else SUBMIT_BURST_DEFAULT)

    @property
    def effective_broker_url(self) -> str | None:
        return self.broker_url or self.redis_url

    @property
    def effective_backend_url(self) -> str | None:
        return self.backend_url or self.redis_url

    @property
    def broker_is_amqp(self) -> bool:
        url = self.effective_broker_url or ""
        return url.startswith(("amqp://", "amqps://", "pyamqp://"))

    def require_redis(self) -> str:
        if not self.redis_url:
            raise ConfigError(
                "TASKGATE_REDIS_URL: not set (`taskgate up` starts an embedded Redis; "
                "a gateway or worker on its own needs this)"
            )
        return self.redis_url

    def require_secret(self) -> Secret:
        if self.secret is None:
            raise ConfigError(
                "TASKGATE_SECRET: not set (the gateway signs and checks tokens with it)"
            )
        if len(self.secret.get().encode()) < MIN_SECRET_BYTES:
            raise ConfigError(f"TASKGATE_SECRET: must be at least {MIN_SECRET_BYTES} bytes long")
        return self.secret

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and check every variable; raise ``ConfigError`` on the first bad one."""
        env = os.environ if environ is None else environ
        r = _Reader(env)
        redis_url = r.url("TASKGATE_REDIS_URL", ("redis://", "rediss://", "unix://", *SCHEMES))
        broker_url = r.url(
            "CELERY_BROKER_URL",
            ("redis://", "rediss://", *SCHEMES, "amqp://", "amqps://", "pyamqp://"),
        )
        backend_url = r.url("CELERY_BACKEND_URL", ("redis://", "rediss://", *SCHEMES)) or r.url(
            "CELERY_RESULT_BACKEND", ("redis://", "rediss://", *SCHEMES)
        )
        secret_raw = env.get("TASKGATE_SECRET")
        soft = r.number("CELERY_TASK_SOFT_TIME_LIMIT", 300.0, float, low=0.1)
        hard = r.number("CELERY_TASK_TIME_LIMIT", 600.0, float, low=0.1)
        if hard < soft:
            raise ConfigError(
                f"CELERY_TASK_TIME_LIMIT: {hard} is below CELERY_TASK_SOFT_TIME_LIMIT ({soft})"
            )
        concurrency_raw = env.get("CELERY_WORKER_CONCURRENCY", "").strip()
        visibility: float | None = None
        if r.present("TASKGATE_VISIBILITY_TIMEOUT_S"):
            visibility = r.number("TASKGATE_VISIBILITY_TIMEOUT_S", 0.0, float, low=1)
            if visibility <= hard:
                raise ConfigError(
                    f"TASKGATE_VISIBILITY_TIMEOUT_S: {visibility:g} must exceed "
                    f"CELERY_TASK_TIME_LIMIT ({hard:g}), or a running task is delivered twice"
                )
        return cls(
            redis_url=redis_url,
            broker_url=broker_url,
            backend_url=backend_url,
            secret=Secret(secret_raw) if secret_raw else None,
            host=env.get("TASKGATE_HOST", "127.0.0.1").strip() or "127.0.0.1",
            port=r.number("TASKGATE_PORT", 8080, int, low=0, high=65535),
            cors_allowed_origins=r.csv("CORS_ALLOWED_ORIGINS"),
            soft_time_limit=soft,
            time_limit=hard,
            worker_concurrency=(
                r.number("CELERY_WORKER_CONCURRENCY", 1, int, low=1) if concurrency_raw else None
            ),
            prefetch_multiplier=r.number("CELERY_WORKER_PREFETCH_MULTIPLIER", 1, int, low=1),
            max_tasks_per_child=(
                r.number("CELERY_WORKER_MAX_TASKS_PER_CHILD", 1, int, low=1)
                if r.present("CELERY_WORKER_MAX_TASKS_PER_CHILD")
                else None
            ),
            max_memory_per_child_kib=(
                r.number("CELERY_WORKER_MAX_MEMORY_PER_CHILD", 1, int, low=1024)
                if r.present("CELERY_WORKER_MAX_MEMORY_PER_CHILD")
                else None
            ),
            task_send_sent_event=r.flag("CELERY_TASK_SEND_SENT_EVENT", True),
            submit_rate=r.number("TASKGATE_SUBMIT_RATE", 50.0, float, low=0),
            submit_burst=(
                r.number("TASKGATE_SUBMIT_BURST", SUBMIT_BURST_DEFAULT, int, low=1)
                if r.present("TASKGATE_SUBMIT_BURST")
                else None
            ),
            max_active=r.number("TASKGATE_MAX_ACTIVE", 1000, int, low=0),
            service_user=r.text("TASKGATE_SERVICE_USER") or "service",
            redis_pool_size=r.number("TASKGATE_REDIS_POOL_SIZE", 100, int, low=1, high=10_000),
            redis_pool_timeout_s=r.number(
                "TASKGATE_REDIS_POOL_TIMEOUT_S", 5.0, float, low=0.01, high=300
            ),
            retention_s=r.number("TASKGATE_RETENTION_S", 86400, int, low=1),
            key_prefix=r.key_prefix("TASKGATE_KEY_PREFIX", "taskgate:"),
            task_modules=r.csv("TASKGATE_TASK_MODULES") or ("worker.demo",),
            log_level=r.choice(
                "TASKGATE_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
            ),
            log_format=r.choice("TASKGATE_LOG_FORMAT", "TEXT", ("TEXT", "JSON")).lower(),
            worker_metrics_port=r.number("TASKGATE_WORKER_METRICS_PORT", 0, int, low=0, high=65535),
            progress_rate=r.number("TASKGATE_PROGRESS_RATE", 20.0, float, low=0, high=10000),
            max_result_bytes=r.number(
                "TASKGATE_MAX_RESULT_BYTES", 1024 * 1024, int, low=1, high=512 * 1024 * 1024
            ),
            gateway_metrics_port=r.number(
                "TASKGATE_GATEWAY_METRICS_PORT", 0, int, low=0, high=65535
            ),
            worker_metrics_host=(env.get("TASKGATE_WORKER_METRICS_HOST") or "").strip()
            or "127.0.0.1",
            metrics_dir=r.text("PROMETHEUS_MULTIPROC_DIR"),
            heartbeat_s=r.number("TASKGATE_HEARTBEAT_S", 15.0, float, low=0.1),
            max_body_bytes=r.number("TASKGATE_MAX_BODY", 1024 * 1024, int, low=1024),
            data_dir=env.get("TASKGATE_DATA_DIR", ".taskgate").strip() or ".taskgate",
            token_audience=r.text("TASKGATE_TOKEN_AUDIENCE"),
            token_issuer=r.text("TASKGATE_TOKEN_ISSUER"),
            socket_event_rate=r.number("TASKGATE_SOCKET_EVENT_RATE", 20.0, float, low=0),
            socket_connect_timeout_s=r.number(
                "TASKGATE_SOCKET_CONNECT_TIMEOUT_S", 5.0, float, low=0, high=3600
            ),
            **r.queues_and_routes(),
            beat_schedule=r.schedule(
                "TASKGATE_BEAT_SCHEDULE", (BeatEntry("taskgate.sweep", every_s=300.0),)
            ),
            visibility_timeout_s=visibility,
            max_attempts=r.number("TASKGATE_MAX_ATTEMPTS", 3, int, low=1, high=100),
            task_heartbeat_s=r.number("TASKGATE_TASK_HEARTBEAT_S", 5.0, float, low=0.1, high=3600),
            webhook_secret=Secret(v) if (v := r._raw("TASKGATE_WEBHOOK_SECRET")) else None,
            webhook_allowed_hosts=r.csv("TASKGATE_WEBHOOK_ALLOWED_HOSTS"),
            webhook_allow_private=r.flag("TASKGATE_WEBHOOK_ALLOW_PRIVATE", False),
            webhook_max_attempts=r.number("TASKGATE_WEBHOOK_MAX_ATTEMPTS", 8, int, low=1, high=50),
            webhook_backoff_s=r.number("TASKGATE_WEBHOOK_BACKOFF_S", 5.0, float, low=0.01),
            webhook_backoff_max_s=r.number(
                "TASKGATE_WEBHOOK_BACKOFF_MAX_S", 300.0, float, low=0.01, high=86400
            ),
            webhook_timeout_s=r.number(
                "TASKGATE_WEBHOOK_TIMEOUT_S", 10.0, float, low=0.1, high=300
            ),
        )


def _without_password(url: str) -> str:
    head, sep, rest = url.partition("://")
    userinfo, at, tail = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{head}://{userinfo.split(':', 1)[0]}:***@{tail}"


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def _raw(self, name: str) -> str | None:
        value = self.env.get(name)
        if value is None or not value.strip():
            return None
        return value.strip()

    def present(self, name: str) -> bool:
        return self._raw(name) is not None

    def url(self, name: str, schemes: tuple[str, ...]) -> str | None:
        """A URL of one of ``schemes``; a sentinel URL is parsed here (``shared.sentinel``),
        so a bad one fails at start. Passwords are never shown."""
        value = self._raw(name)
        if value is None:
            return None
        try:
            if value.lower().startswith((*SCHEMES, KOMBU_SCHEME)):
                parse_sentinel_url(value)
                return value
        except SentinelURLError as exc:
            raise ConfigError(f"{name}: {exc}") from None
        if not value.startswith(schemes):
            shown = _without_password(value)
            raise ConfigError(f"{name}: {shown!r} must start with one of {', '.join(schemes)}")
        return value

    def number(
        self,
        name: str,
        default: T,
        kind: Callable[[str], T],
        *,
        low: float | None = None,
        high: float | None = None,
    ) -> T:
        value = self._raw(name)
        if value is None:
            return default
        try:
            parsed = kind(value)
        except ValueError:
            raise ConfigError(f"{name}: {value!r} is not a valid {kind.__name__}") from None
        num = float(parsed)  # type: ignore[arg-type]
        if num != num or num in (float("inf"), float("-inf")):
            raise ConfigError(f"{name}: {value!r} is not a finite number")
        if low is not None and num < low:
            raise ConfigError(f"{name}: {value!r} must be at least {low:g}")
        if high is not None and num > high:
            raise ConfigError(f"{name}: {value!r} must be at most {high:g}")
        return parsed

    def text(self, name: str) -> str | None:
        return self._raw(name)

    def csv(self, name: str) -> tuple[str, ...]:
        value = self._raw(name)
        if value is None:
            return ()
        return tuple(part.strip() for part in value.split(",") if part.strip())

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self._raw(name)
        if value is None:
            return default
        if value.upper() not in choices:
            raise ConfigError(f"{name}: {value!r} must be one of {', '.join(choices)}")
        return value.upper()

    def flag(self, name: str, default: bool) -> bool:
        """A yes/no variable: ``1``, ``true``, ``yes`` or ``0``, ``false``, ``no``."""
        return _FLAGS[self.choice(name, "1" if default else "0", tuple(_FLAGS))]

    def queues_and_routes(self) -> dict[str, Any]:
        queues = self.csv("TASKGATE_QUEUES") or ("fast", "heavy")
        for q in queues:
            if not _NAME.match(q):
                raise ConfigError(f"TASKGATE_QUEUES: {q!r} is not a valid queue name")
        routes = []
        for rule in self.csv("TASKGATE_ROUTES"):
            pattern, sep, queue = rule.partition("=")
            if not sep or not pattern.strip() or queue.strip() not in queues:
                raise ConfigError(
                    f"TASKGATE_ROUTES: {rule!r} must be pattern=queue, "
                    "the queue one of TASKGATE_QUEUES"
                )
            routes.append((pattern.strip(), queue.strip()))
        return {"queues": queues, "routes": tuple(routes)}

    def schedule(self, name: str, default: tuple[BeatEntry, ...]) -> tuple[BeatEntry, ...]:
        """See ``shared.beat``; ``off`` for none."""
        value = self._raw(name)
        if value is None:
            return default
        return parse_schedule(value, name)

    def key_prefix(self, name: str, default: str) -> str:
        value = self._raw(name)
        if value is None:
            return default
        if any(c.isspace() for c in value) or len(value) > 64:
            raise ConfigError(f"{name}: {value!r} must be at most 64 characters without spaces")
        return value
