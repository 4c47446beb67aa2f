"""Small readers for the deployment files, enough for tests/deploy to check them without Docker:
compose's variable interpolation, a Dockerfile's instructions by stage, nginx's block
structure, and the environment variables the project reads."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.cli import embedded
from shared.settings import Settings
from worker import ray_engine, ray_local

# ---------------------------------------------------------------------------------------------
# Compose interpolation (the Compose specification's subset this project uses, and a little more)

_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(Exception):
    """A ``${NAME:?message}`` whose NAME is unset or empty (compose refuses to start)."""


def variables(text: str) -> set[str]:
    """The names ``text`` interpolates (``$$`` is a literal dollar, not a variable)."""
    names = set()
    for m in _VAR.finditer(text):
        if not m.group("escaped"):
            names.add(m.group("braced") or m.group("bare"))
    return names


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """``text`` as compose would hand it to the container, with ``env`` as the shell's."""

    def one(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        name = m.group("braced") or m.group("bare")
        op, arg = m.group("op"), m.group("arg") or ""
        value = env.get(name)
        empty = value is None or (value == "" and op is not None and op.startswith(":"))
        if op in (":-", "-"):
            return arg if empty else (value or "")
        if op in (":?", "?"):
            if empty:
                raise MissingVariable(f"{name}: {arg}")
            return value or ""
        if op in (":+", "+"):
            return "" if empty else arg
        return value or ""

    return _VAR.sub(one, text)


def walk_strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string in a parsed YAML tree, with where it is (``services.x.command[2]``)."""
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, Mapping):
        for key, value in node.items():
            yield from walk_strings(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk_strings(value, f"{path}[{i}]")


def duration_s(value: str | int | float) -> float:
    """A compose duration (``1m30s``, ``330s``, ``2h``) in seconds."""
    if isinstance(value, int | float):
        return float(value)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ValueError(f"not a compose duration: {value!r}")
    return sum(float(n) * units[u] for n, u in parts)


# ---------------------------------------------------------------------------------------------
# The environment variables the project reads


class RecordingEnv(Mapping[str, str]):
    """An empty environment that notes every name it is asked for."""

    def __init__(self) -> None:
        self.asked: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return default

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.asked.add(key)
        return False

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def project_env_names() -> frozenset[str]:
    """Every variable ``Settings.from_env`` reads, and the per-queue pool sizes of ``taskgate
    up`` (``embedded.queue_concurrency``), found by asking the code rather than a list."""
    env = RecordingEnv()
    Settings.from_env(env)
    for queue in embedded.QUEUES:
        embedded.queue_concurrency(env, queue)
    # The Ray engine's own (read where a Ray task runs, not through Settings).
    env.asked |= {ray_engine.ADDRESS_ENV, ray_engine.GRACE_ENV, ray_local.CPUS_ENV}
    return frozenset(env.asked)


# ---------------------------------------------------------------------------------------------
# Dockerfile


@dataclass
class Instruction:
    keyword: str  # upper case
    args: str  # as written, continuations joined
    line: int

    @property
    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction, else ``None``."""
        text = self.args
        if self.keyword == "HEALTHCHECK":
            m = re.search(r"\bCMD\s+(.*)$", text, re.S)
            if m is None:
                return None
            text = m.group(1)
        try:
            parsed = json.loads(text)
        except ValueError:
            return None
        if isinstance(parsed, list) and all(isinstance(x, str) for x in parsed):
            return parsed
        return None

    def flags(self) -> dict[str, str]:
        """``--name=value`` options before the instruction's arguments."""
        return dict(re.findall(r"--([a-z-]+)=(\S+)", self.args.split(" CMD ")[0]))


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str) -> list[Stage]:
    """The stages of a Dockerfile, each with its instructions (comments dropped)."""
    stages: list[Stage] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical = (pending + stripped).strip()
        pending = ""
        keyword, _, args = logical.partition(" ")
        instruction = Instruction(keyword.upper(), re.sub(r"\s+", " ", args).strip(), start)
        if instruction.keyword == "FROM":
            m = re.match(r"(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?$", instruction.args, re.I)
            if m is None:
                raise ValueError(f"line {start}: cannot read FROM {instruction.args!r}")
            stages.append(Stage(m.group(1), m.group(2)))
        elif not stages:
            if instruction.keyword != "ARG":
                raise ValueError(f"line {start}: {instruction.keyword} before the first FROM")
        else:
            stages[-1].instructions.append(instruction)
    return stages


# ---------------------------------------------------------------------------------------------
# nginx


@dataclass
class Directive:
    name: str
    args: list[str]
    children: list[Directive] = field(default_factory=list)

    def find(self, name: str) -> list[Directive]:
        """Every directive called ``name`` at any depth below this one."""
        found = []
        for child in self.children:
            if child.name == name:
                found.append(child)
            found.extend(child.find(name))
        return found

    def own(self, name: str) -> list[Directive]:
        """The directives called ``name`` directly in this block."""
        return [c for c in self.children if c.name == name]


_NGINX_TOKEN = re.compile(r"#[^\n]*|\"(?:\\.|[^\"])*\"|'(?:\\.|[^'])*'|[{};]|[^\s{};\"'#]+")


def parse_nginx(text: str) -> Directive:
    """nginx.conf as a tree of directives (quotes removed; an unbalanced brace raises)."""
    root = Directive("", [])
    stack = [root]
    words: list[str] = []
    for token in _NGINX_TOKEN.findall(text):
        if token.startswith("#"):
            continue
        if token in (";", "{"):
            if not words:
                raise ValueError(f"nginx.conf: {token!r} without a directive")
            directive = Directive(words[0], words[1:])
            stack[-1].children.append(directive)
            if token == "{":
                stack.append(directive)
            words = []
        elif token == "}":
            if words or len(stack) == 1:
                raise ValueError("nginx.conf: unbalanced '}' or a directive without ';'")
            stack.pop()
        else:
            words.append(token[1:-1] if token[0] in "\"'" else token)
    if words or len(stack) != 1:
        raise ValueError("nginx.conf: unterminated block or directive")
    return root
