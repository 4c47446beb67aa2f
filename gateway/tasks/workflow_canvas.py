"""A parsed workflow as Celery's canvas: the messages that start it, the signatures they carry,
and the chord sizes to write before them.

Celery runs a canvas from inside its workers: when a task returns, the worker's trace publishes
the next signature of its chain (``celery.app.trace``), whatever it is (a task, a group, a
chord), and the Redis result backend calls a chord's body when the last part of its header
returned (``on_chord_part_return``). So the gateway only starts a workflow: it publishes the
steps that start at once, each carrying, as Celery's own ``apply_async`` would have it, what
follows it (the rest of its chain; the body of the chord it is a part of, with the chord's
group id and its index), and writes the size of each chord it starts. The rest is Celery's.

First the tree is put in the shape Celery's ``chain.prepare_steps`` gives a canvas:

- a chain inside a chain is spliced in, and a chain of one step is that step;
- a group or a chord with steps after it in a chain takes them as its continuation:
  ``[a, g, x, y]`` becomes ``[a, chord(g, chain(x, y))]`` and ``[chord(h, b), x]`` becomes
  ``chord(h, chain(b, x))`` (Celery upgrades ``group | x`` to a chord the same way; applying a
  group with a chain would run the chain once per member);
- a group inside a group or a chord's header is spliced in: Celery applies nested groups flat,
  so a chord's body gets one flat list of results.

Then only the last step of a chain is anything but a task. A part of a chord (a header step)
that ends in a group, such as ``chain(a, group(b, c))`` in a header or before a later step, is
refused: Celery hands such a part's results on only as a nested GroupResult that ``chord.run``
saves, counting each of the group's tasks as a part of the outer chord; taskgate keeps to parts
that end in one task (a task, a chain whose last step is one, a chord whose body is one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.broker.message import TaskMessage
from gateway.tasks.submission import build_message, field_error
from gateway.tasks.workflow_body import Chain, Chord, Group, Node, Step


@dataclass(frozen=True, slots=True)
class Join:
    """The chord a part ends in: its last task reports to ``group_id`` at ``index``, and the
    last part to return calls ``body``."""

    group_id: str
    body: dict[str, Any]
    index: int


@dataclass(slots=True)
class Start:
    """What starting a workflow publishes: a message per step that starts at once (with its
    step), and the size of each chord those messages are parts of."""

    messages: list[tuple[Step, TaskMessage]] = field(default_factory=list)
    chord_sizes: dict[str, int] = field(default_factory=dict)


def normalize(node: Node) -> Node:
    """``node`` in the shape Celery runs (see the module's docstring)."""
    match node:
        case Step():
            return node
        case Group(steps, group_id, path):
            return Group(_spliced(steps), group_id, path)
        case Chord(header, body, group_id, path):
            return Chord(_spliced(header), normalize(body), group_id, path)
        case Chain(steps, path):
            flat: list[Node] = []
            for step in steps:
                n = normalize(step)
                flat.extend(n.steps if isinstance(n, Chain) else (n,))
            for i, step in enumerate(flat[:-1]):
                if isinstance(step, Group):
                    then = normalize(Chain(tuple(flat[i + 1 :]), path))
                    flat[i:] = [Chord(step.steps, then, step.group_id, step.path)]
                    break
                if isinstance(step, Chord):
                    then = normalize(Chain((step.body, *flat[i + 1 :]), path))
                    flat[i:] = [Chord(step.header, then, step.group_id, step.path)]
                    break
            return flat[0] if len(flat) == 1 else Chain(tuple(flat), path)


def _spliced(steps: tuple[Node, ...]) -> tuple[Node, ...]:
    """The steps of a group or a chord's header, each normalized, nested groups spliced in."""
    out: list[Node] = []
    for step in steps:
        n = normalize(step)
        out.extend(n.steps if isinstance(n, Group) else (n,))
    return tuple(out)


def check_parts(node: Node) -> None:
    """Refuse a chord part that ends in a group (see the module's docstring), by its path."""
    match node:
        case Chord(header, body):
            for part in header:
                last = _last(part)
                if isinstance(last, Group):
                    raise field_error(
                        part.path,
                        f"ends in the group {last.path}, and later steps wait for it: a step "
                        "that later steps wait for must end in one task",
                    )
                check_parts(part)
            check_parts(body)
        case Chain(steps) | Group(steps):
            for step in steps:
                check_parts(step)


def _last(node: Node) -> Node:
    """What a node's result is the result of: a task, or a group."""
    match node:
        case Chain(steps):
            return _last(steps[-1])
        case Chord(_, body):
            return _last(body)
    return node


class Canvas:
    """Celery signatures and starting messages for the workflow ``workflow_id``."""

    def __init__(self, workflow_id: str, priority: Callable[[int], int]) -> None:
        self.workflow_id = workflow_id
        self.priority = priority

    def start(self, root: Node) -> Start:
        """The messages and chord sizes that start the (normalized) tree ``root``."""
        out = Start()
        self._enter(root, None, None, out)
        return out

    def _enter(
        self, node: Node, join: Join | None, group: tuple[str, int] | None, out: Start
    ) -> None:
        match node:
            case Step():
                out.messages.append((node, self._message(node, join, group)))
            case Chain(steps):
                first = steps[0]
                assert isinstance(first, Step), "a normalized chain starts with a task"
                rest = [self.signature(s) for s in steps[1:-1]]
                rest.append(self.signature(steps[-1], join))
                # Celery pops the next step from the end of the embedded chain.
                out.messages.append((first, self._message(first, None, None, rest[::-1])))
            case Group(steps, group_id):
                for i, step in enumerate(steps):
                    self._enter(step, None, (group_id, i), out)
            case Chord(header, body, group_id):
                body_sig = self.signature(body, join)
                body_sig["chord_size"] = out.chord_sizes[group_id] = len(header)
                for i, part in enumerate(header):
                    self._enter(part, Join(group_id, body_sig, i), None, out)

    def _message(
        self,
        step: Step,
        join: Join | None,
        group: tuple[str, int] | None,
        chain: list[dict[str, Any]] | None = None,
    ) -> TaskMessage:
        group_id, index = (join.group_id, join.index) if join else group or (None, None)
        return build_message(
            step.sub,
            step.task_id,
            root_id=self.workflow_id,
            embed=embed(chain=chain or None, chord=join.body if join else None),
            group_id=group_id,
            group_index=index,
        )

    def signature(self, node: Node, join: Join | None = None) -> dict[str, Any]:
        """The Celery signature of ``node``, for a message to carry; ``join``: the chord whose
        part it ends (its last task is frozen with it, as ``Signature.freeze`` does)."""
        match node:
            case Step():
                return self._task_signature(node, join)
            case Chain(steps):
                tasks = [self.signature(s) for s in steps[:-1]]
                tasks.append(self.signature(steps[-1], join))
                return _canvas_signature("chain", {"tasks": tasks}, {})
            case Group(steps, group_id):
                if join is not None:
                    raise ValueError(f"{node.path}: a group cannot end a chord's part")
                tasks = [self.signature(s) for s in steps]
                return _canvas_signature("group", {"tasks": tasks}, {"task_id": group_id})
            case Chord(header, body):
                # Celery freezes the header itself when it applies the chord, under a group id
                # of its own; only the body may need the join of an enclosing chord.
                kwargs = {
                    "header": [self.signature(s) for s in header],
                    "body": self.signature(body, join),
                    "kwargs": {},
                }
                return _canvas_signature("chord", kwargs, {})

    def _task_signature(self, step: Step, join: Join | None) -> dict[str, Any]:
        sub = step.sub
        options: dict[str, Any] = {
            "task_id": step.task_id,
            "queue": sub.queue,
            "priority": self.priority(sub.priority),
            "root_id": self.workflow_id,
            "time_limit": sub.spec.time_limit,
            "soft_time_limit": sub.spec.soft_time_limit,
            **step.later,
        }
        if join is not None:
            options.update(group_id=join.group_id, chord=join.body, group_index=join.index)
        return {
            "task": sub.spec.name,
            "args": [],
            "kwargs": sub.input,
            "options": options,
            "subtask_type": None,
            "immutable": False,
            "chord_size": None,
        }


def _canvas_signature(kind: str, kwargs: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """A chain, group or chord signature as Celery serializes one (``Signature.from_dict``
    picks the class by ``subtask_type``)."""
    return {
        "task": f"celery.{kind}",
        "args": [],
        "kwargs": kwargs,
        "options": options,
        "subtask_type": kind,
        "immutable": False,
        "chord_size": None,
    }


def embed(chain: Any = None, chord: Any = None) -> dict[str, Any]:
    """The protocol-2 embed: what Celery runs after a task (its chain, a chord's body)."""
    return {"callbacks": None, "errbacks": None, "chain": chain, "chord": chord}
