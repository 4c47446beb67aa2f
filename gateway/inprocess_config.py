"""Settings of the in-process manager API, from a dict or the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from shared.errors import ConfigError

_ENV = {
    "task_timeout_seconds": "CELERY_TASK_TIMEOUT",
    "batch_size": "CELERY_BATCH_SIZE",
    "rate_limit_requests_per_second": "CELERY_RATE_LIMIT",
    "default_user": "TASKGATE_SERVICE_USER",
}


@dataclass(frozen=True)
class ManagerConfig:
    """``execute_task`` waits ``task_timeout_seconds``; batches go ``batch_size`` at a time, at
    most ``rate_limit_requests_per_second`` submissions per second; calls without a
    ``context["user_id"]`` act as ``default_user``."""

    task_timeout_seconds: float = 300.0
    batch_size: int = 100
    rate_limit_requests_per_second: float = 100.0
    default_user: str = "service"

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ManagerConfig:
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"manager config: unknown key {unknown[0]!r}")
        values: dict[str, Any] = {}
        for name, raw in data.items():
            values[name] = _convert(name, raw)
        return cls(**values)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ManagerConfig:
        env = os.environ if environ is None else environ
        data: dict[str, Any] = {}
        for name, var in _ENV.items():
            raw = env.get(var, "").strip()
            if raw:
                try:
                    data[name] = _convert(name, raw)
                except ConfigError as exc:
                    raise ConfigError(f"{var}: {exc.message.split(': ', 1)[1]}") from None
        return cls(**data)


def _convert(name: str, raw: Any) -> Any:
    if name == "default_user":
        if not isinstance(raw, str) or not raw:
            raise ConfigError(f"{name}: must be a non-empty string")
        return raw
    try:
        value = int(raw) if name == "batch_size" else float(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: {raw!r} is not a number") from None
    if value <= 0:
        raise ConfigError(f"{name}: {raw!r} must be above 0")
    return value
