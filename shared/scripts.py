"""The Lua scripts that change records, queues and buckets atomically inside Redis.

Each script is a file of ``shared/lua/`` (shipped in the wheel as package data), read with
``importlib.resources``. Its header says what it does, its ``KEYS`` and ``ARGV`` by index and
what it returns; the Python wrapper next to its use builds a ``ScriptCall`` in that order.
Every key a script touches comes in ``KEYS``, built by ``shared.keys.Keys``; a key the script
only finds inside Redis (a task id read from a set) is the fixed prefix from ``Keys`` joined
with what it read.

Fragments shared by several scripts (the snapshot and publish helpers, the terminal set) are
files too. A script takes one in with a line of its own::

    --!include publish.lua

``source`` replaces that line with the fragment's text (its own includes expanded the same
way). Each fragment goes in once per script: an include of one already in is dropped, so a
script may include ``publish.lua`` and ``snapshot_json.lua``, which ``publish.lua`` includes
too. Nothing else is rewritten: the text Redis runs is the files' text.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

INCLUDE = "--!include "


@functools.cache
def source(name: str) -> str:
    """The script ``shared/lua/<name>``, its includes expanded; read once, then cached.

    Load at import time (module constants): a first read on an event loop is blocking I/O."""
    return "".join(_expand(name, set()))


def _expand(name: str, included: set[str]) -> list[str]:
    included.add(name)
    text = (files("shared") / "lua" / name).read_text(encoding="utf-8")
    if not text.endswith("\n"):
        text += "\n"  # the next file's first line starts a line of its own
    out: list[str] = []
    for line in text.splitlines(keepends=True):
        if line.startswith(INCLUDE):
            fragment = line[len(INCLUDE) :].strip()
            if fragment not in included:
                out.extend(_expand(fragment, included))
        else:
            out.append(line)
    return out


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """One run's ``KEYS`` and ``ARGV``, each in the order of the script's header."""

    keys: list[Any] = field(default_factory=list)
    args: list[Any] = field(default_factory=list)
