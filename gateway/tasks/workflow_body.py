"""A workflow body parsed into a tree of steps, within its limits (``POST /api/workflows``).

A body is ``{"chain": [step, ...]}``, ``{"group": [step, ...]}`` or
``{"chord": {"header": [step, ...], "body": step}}``. A step is a submit body (``{"task": ...,
"input": ..., "queue"?, "priority"?, "countdown"?, "eta"?, "expires"?}``) or, nested, one of
those three. Every refusal is a 422 naming the field by its path: ``chain[1].group[0].task``,
``chord.header[2].chain[0].input.value``, ``group[0].chord.body``.

Limits:

- ``MAX_DEPTH`` levels of chain, group and chord (the body's own is the first);
- ``MAX_STEPS`` steps in one list (a chain, a group, a chord's header);
- ``MAX_TASKS`` task steps in all;
- ``MAX_CARRIED``: each step's message carries every step that follows it (a chain's rest, a
  chord's body), as Celery's canvas does, so a group of many steps followed by many more would
  publish the same steps over and over; the copies of all steps' messages together are capped
  (a flat chain of 100 carries 4950).

Timing: a step that starts at once (the first of a chain, each of a group or a chord header)
takes ``countdown`` / ``eta`` / ``expires`` as a single submit does (a delay waits in the
gateway's hold, ``gateway.tasks.delayed``). A later step is handed to Celery when the step
before it ends: ``countdown`` and a number of seconds for ``expires`` then count from that
moment, ``eta`` and an ISO ``expires`` are absolute. Its wait is held by the worker, so it may
be at most the broker's visibility timeout less the task's time limit (longer would run it
twice); more is refused, naming the field. With RabbitMQ a later step takes no ``expires``
(Celery sends it as a message TTL; RabbitMQ drops an expired message unseen). A step that
expires ends CANCELLED ``Expired``, and the steps after it CANCELLED.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.tasks.submission import MAX_DELAY_S, Submission, field_error, iso, parse_submission
from shared.errors import TaskgateError

KINDS = ("chain", "group", "chord")
MAX_DEPTH = 4
MAX_STEPS = 100
MAX_TASKS = 200
MAX_CARRIED = 5000
# Options a single submit takes that a step does not: a step is one part of its workflow.
STEP_REFUSED = ("idempotency_key", "callback_url")
_NESTED = 'must be exactly one of {"chain": [...]}, {"group": [...]}, {"chord": {...}}'


@dataclass(frozen=True, slots=True)
class Step:
    """One task of the workflow: its submission, id and place in the body."""

    sub: Submission
    task_id: str
    path: str
    # Celery's options for this step when it is handed on after another one (countdown, eta,
    # expires), and how long its worker would hold it before it is due.
    later: dict[str, Any] = field(default_factory=dict)
    hold_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Chain:
    steps: tuple[Node, ...]
    path: str


@dataclass(frozen=True, slots=True)
class Group:
    steps: tuple[Node, ...]
    group_id: str
    path: str


@dataclass(frozen=True, slots=True)
class Chord:
    header: tuple[Node, ...]
    body: Node
    group_id: str
    path: str


Node = Step | Chain | Group | Chord


@dataclass(frozen=True, slots=True)
class Workflow:
    """A parsed body: its kind, its tree, and its task steps in the body's order."""

    kind: str
    root: Node
    steps: list[Step]


def parse_workflow(
    body: Any,
    workflow_id: str,
    routes: Sequence[tuple[str, str]] = (),
    *,
    max_delay_s: float = MAX_DELAY_S,
    visibility_s: float = float("inf"),
    time_limit_s: float = 0.0,
    amqp: bool = False,
) -> Workflow:
    """Check a workflow body; raise ``InvalidInput`` naming the field. The outermost group or
    chord gets ``workflow_id`` as its group id (nested ones get ids of their own).

    A step handed on after another may wait at most ``visibility_s`` (the broker's visibility
    timeout) less its time limit (its task's own, else ``time_limit_s``). With RabbitMQ
    (``amqp``) such a step takes no ``expires``: Celery sends it as a message TTL, and RabbitMQ
    drops an expired message unseen, which would leave its task PENDING for good."""
    if not isinstance(body, dict) or len(body) != 1 or next(iter(body)) not in KINDS:
        raise field_error("body", _NESTED.replace("exactly ", ""))
    kind, spec = next(iter(body.items()))
    parser = _Parser(routes, max_delay_s)
    root = parser.container(kind, spec, kind, 1, workflow_id)
    _check_carried(root)
    _check_later(root, visibility_s, time_limit_s, amqp)
    return Workflow(kind, root, parser.steps)


class _Parser:
    def __init__(self, routes: Sequence[tuple[str, str]], max_delay_s: float) -> None:
        self.routes = routes
        self.max_delay_s = max_delay_s
        self.steps: list[Step] = []

    def container(self, kind: str, spec: Any, path: str, depth: int, group_id: str) -> Node:
        if kind == "chord":
            if not isinstance(spec, dict) or set(spec) != {"header", "body"}:
                raise field_error(path, 'must be {"header": [steps], "body": step}')
            header = self.nodes(spec["header"], f"{path}.header", depth)
            return Chord(header, self.node(spec["body"], f"{path}.body", depth), group_id, path)
        steps = self.nodes(spec, path, depth)
        return Chain(steps, path) if kind == "chain" else Group(steps, group_id, path)

    def nodes(self, value: Any, path: str, depth: int) -> tuple[Node, ...]:
        if not isinstance(value, list) or not 0 < len(value) <= MAX_STEPS:
            raise field_error(path, f"must be a list of 1 to {MAX_STEPS} steps")
        return tuple(self.node(v, f"{path}[{i}]", depth) for i, v in enumerate(value))

    def node(self, value: Any, path: str, depth: int) -> Node:
        if isinstance(value, dict) and "task" not in value and value.keys() & set(KINDS):
            if len(value) != 1:
                raise field_error(path, _NESTED)
            kind, spec = next(iter(value.items()))
            if depth >= MAX_DEPTH:
                raise field_error(
                    f"{path}.{kind}", f"nests workflows more than {MAX_DEPTH} levels deep"
                )
            return self.container(kind, spec, f"{path}.{kind}", depth + 1, str(uuid.uuid4()))
        return self.step(value, path)

    def step(self, value: Any, path: str) -> Step:
        if isinstance(value, dict):
            for name in STEP_REFUSED:
                if name in value:
                    raise field_error(f"{path}.{name}", "is not taken by a workflow step")
        if len(self.steps) == MAX_TASKS:
            raise field_error(path, f"is one task too many: a workflow has at most {MAX_TASKS}")
        try:
            sub = parse_submission(value, self.routes, max_delay_s=self.max_delay_s)
        except TaskgateError as exc:
            raise _at(exc, path) from None
        later, hold_s = _later_timing(value, sub)
        step = Step(sub, str(uuid.uuid4()), path, later, hold_s)
        self.steps.append(step)
        return step


def _at(exc: TaskgateError, where: str) -> TaskgateError:
    """``exc`` with its field named from the workflow body's root."""
    details = exc.details if isinstance(exc.details, dict) else {}
    inner = details.get("field", "")
    exc.details = {**details, "field": f"{where}.{inner}" if inner else where}
    exc.message = f"{where}: {exc.message}"
    return exc


def _later_timing(body: dict[str, Any], sub: Submission) -> tuple[dict[str, Any], float]:
    """Celery's options for a step handed on after another (``parse_submission`` checked the
    values), and the longest its worker would hold it."""
    options: dict[str, Any] = {}
    hold_s = 0.0
    if "countdown" in body:
        options["countdown"] = hold_s = float(body["countdown"])
    elif sub.due_at is not None:
        options["eta"] = iso(sub.due_at)
        hold_s = sub.due_at - time.time()
    if "expires" in body:
        raw = body["expires"]
        numeric = isinstance(raw, int | float) and not isinstance(raw, bool)
        options["expires"] = float(raw) if numeric else iso(sub.expires_at or 0.0)
    return options, hold_s


def leaves(node: Node) -> list[Step]:
    """The task steps of ``node`` in the body's order (a chord: its header's, then its body's)."""
    match node:
        case Step():
            return [node]
        case Chain(steps) | Group(steps):
            return [s for n in steps for s in leaves(n)]
        case Chord(header, body):
            return [s for n in header for s in leaves(n)] + leaves(body)


def first_steps(node: Node) -> list[Step]:
    """The task steps that start at once, when the workflow is submitted."""
    match node:
        case Step():
            return [node]
        case Chain(steps):
            return first_steps(steps[0])
        case Group(steps) | Chord(steps):
            return [s for n in steps for s in first_steps(n)]


def _check_carried(root: Node) -> None:
    """Each step's message carries the steps after it; refuse a body whose copies in all
    exceed ``MAX_CARRIED``, naming the step at which they do."""
    total = 0

    def walk(node: Node, after: int) -> None:
        nonlocal total
        match node:
            case Step():
                total += after
                if total > MAX_CARRIED:
                    raise field_error(
                        node.path,
                        f"carries the {after} steps after it, and the workflow's steps would "
                        f"carry more than {MAX_CARRIED} copies of later steps in all",
                    )
            case Chain(steps):
                sizes = [len(leaves(s)) for s in steps]
                for i, s in enumerate(steps):
                    walk(s, after + sum(sizes[i + 1 :]))
            case Group(steps):
                for s in steps:
                    walk(s, after)
            case Chord(header, body):
                for s in header:
                    walk(s, after + len(leaves(body)))
                walk(body, after)

    walk(root, 0)


def _check_later(root: Node, visibility_s: float, time_limit_s: float, amqp: bool) -> None:
    """Refuse timing that a step handed on after another cannot honour (see ``parse_workflow``)."""
    first = {s.task_id for s in first_steps(root)}
    for step in leaves(root):
        if step.task_id in first:
            continue
        if amqp and "expires" in step.later:
            raise field_error(
                f"{step.path}.expires",
                "is not taken by a step that follows another with RabbitMQ as the broker: "
                "RabbitMQ drops an expired message unseen, and the task would stay PENDING",
            )
        hold_limit_s = max(0.0, visibility_s - (step.sub.spec.time_limit or time_limit_s))
        if step.hold_s <= hold_limit_s:
            continue
        name = "countdown" if "countdown" in step.later else "eta"
        raise field_error(
            f"{step.path}.{name}",
            f"must be at most {hold_limit_s:g} seconds away for a step that follows another: "
            "its worker holds it until due, and a longer wait would outlast the broker's "
            "visibility timeout (TASKGATE_VISIBILITY_TIMEOUT_S less the task's time limit)",
        )
