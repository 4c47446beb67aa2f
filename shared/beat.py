"""Beat's schedule (``TASKGATE_BEAT_SCHEDULE``): which tasks ``celery -A worker beat`` sends when.

Entries are separated by commas (outside brackets, braces and quotes), each one of::

    name=seconds                        every so many seconds (1 to 604800)
    name=crontab(m h dom mon dow)       Celery's crontab, five fields
    ...:{"json": "input"}               either, with the task's input (a JSON object)

``off`` schedules nothing. A run of a user task is an ordinary message the worker adopts: a
recorded task of the service user (``worker.adopt``). Names are checked against the registry
when beat or a worker starts (``unknown_names``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from shared.errors import ConfigError

MAX_EVERY_S = 7 * 86400
_CRONTAB = re.compile(r"^crontab\(\s*([^()]*?)\s*\)$")
_CRON_FIELD = re.compile(r"^[0-9*/,\-a-zA-Z]+$")


@dataclass(frozen=True)
class BeatEntry:
    task: str
    every_s: float | None = None
    # minute, hour, day of month, month of year, day of week
    crontab: tuple[str, str, str, str, str] | None = None
    input: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        when = f"every {self.every_s:g}s" if self.every_s is not None else "crontab(...)"
        if self.crontab is not None:
            when = f"crontab({' '.join(self.crontab)})"
        return f"{self.task} {when}"


def split_entries(value: str) -> list[str]:
    """Split at commas that are not inside (), {}, [] or a JSON string."""
    out: list[str] = []
    depth, start, quoted, escaped = 0, 0, False, False
    for i, ch in enumerate(value):
        if quoted:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
            continue
        if ch == '"':
            quoted = True
        elif ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(value[start:i])
            start = i + 1
    out.append(value[start:])
    return [part.strip() for part in out if part.strip()]


def parse_entry(rule: str, variable: str) -> BeatEntry:
    name, sep, rest = rule.partition("=")
    name = name.strip()
    if not sep or not name:
        raise ConfigError(f"{variable}: {rule!r} must be task=seconds or task=crontab(...)")
    when, payload = rest.strip(), ""
    if when.startswith("crontab("):
        close = when.find(")")
        when, payload = when[: close + 1], when[close + 1 :]
    else:
        when, _, payload = when.partition(":")
        payload = ":" + payload if payload else ""
    payload = payload.strip()
    data: dict[str, Any] = {}
    if payload:
        if not payload.startswith(":"):
            raise ConfigError(f"{variable}: {rule!r}: the input follows a ':'")
        try:
            parsed = orjson.loads(payload[1:])
        except orjson.JSONDecodeError:
            raise ConfigError(f"{variable}: {rule!r}: the input is not JSON") from None
        if not isinstance(parsed, dict):
            raise ConfigError(f"{variable}: {rule!r}: the input must be a JSON object")
        data = parsed
    cron = _CRONTAB.match(when.strip())
    if cron:
        fields = cron.group(1).split()
        if len(fields) != 5 or not all(_CRON_FIELD.match(f) for f in fields):
            raise ConfigError(f"{variable}: {rule!r}: crontab takes five fields (m h dom mon dow)")
        return BeatEntry(name, crontab=(fields[0], fields[1], fields[2], fields[3], fields[4]),
                         input=data)  # fmt: skip
    try:
        seconds = float(when)
    except ValueError:
        seconds = -1.0
    if not 1 <= seconds <= MAX_EVERY_S:
        raise ConfigError(
            f"{variable}: {rule!r} must be task=seconds (1 to {MAX_EVERY_S}) or "
            "task=crontab(m h dom mon dow)"
        )
    return BeatEntry(name, every_s=seconds, input=data)


def parse_schedule(value: str, variable: str) -> tuple[BeatEntry, ...]:
    if value.strip().lower() == "off":
        return ()
    return tuple(parse_entry(rule, variable) for rule in split_entries(value))


def unknown_names(entries: tuple[BeatEntry, ...], known: set[str]) -> list[str]:
    """The entries' task names that no worker knows."""
    return [e.task for e in entries if e.task not in known]
