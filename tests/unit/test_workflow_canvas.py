"""A workflow body's tree in the shape Celery runs, and the messages that start it (no broker:
what the gateway would publish, read back)."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest

import worker.demo  # noqa: F401  (registers the demo tasks)
from gateway.tasks.workflow_body import Chain, Chord, Group, Node, Step, parse_workflow
from gateway.tasks.workflow_canvas import Canvas, normalize
from shared.errors import InvalidInput


def add(value: float, **options: Any) -> dict[str, Any]:
    return {"task": "demo.add", "input": {"value": value}, **options}


def shape(node: Node) -> Any:
    """The tree with each task as its ``value``."""
    match node:
        case Step():
            return node.sub.input["value"]
        case Chain(steps):
            return ("chain", [shape(s) for s in steps])
        case Group(steps):
            return ("group", [shape(s) for s in steps])
        case Chord(header, body):
            return ("chord", [shape(s) for s in header], shape(body))


def test_groups_and_chords_in_a_chain_take_the_steps_after_them() -> None:
    nested = {"group": [add(2), {"group": [add(3)]}]}
    body = {"chain": [add(1), nested, add(4), {"chain": [add(5)]}]}
    flow = parse_workflow(body, str(uuid.uuid4()))
    assert shape(normalize(flow.root)) == (
        "chain", [1, ("chord", [2, 3], ("chain", [4, 5]))],
    )  # fmt: skip
    chord_first = {"chain": [{"chord": {"header": [add(1)], "body": add(2)}}, add(3)]}
    root = normalize(parse_workflow(chord_first, str(uuid.uuid4())).root)
    assert shape(root) == ("chord", [1], ("chain", [2, 3]))


def test_a_chain_in_a_chord_header_ends_in_the_chord() -> None:
    wid = str(uuid.uuid4())
    body = {"chord": {"header": [{"chain": [add(1), add(2)]}, add(3)], "body": add(4)}}
    flow = parse_workflow(body, wid)
    start = Canvas(wid, lambda p: p).start(normalize(flow.root))
    assert start.chord_sizes == {wid: 2}
    first, third = (orjson.loads(m.body) for _, m in start.messages)
    # The chain's first task carries the rest; its last task reports to the chord, part 0.
    (last,) = first[2]["chain"]
    assert last["options"]["task_id"] == flow.steps[1].task_id
    assert last["options"]["group_id"] == wid and last["options"]["group_index"] == 0
    assert last["options"]["chord"]["options"]["task_id"] == flow.steps[3].task_id
    assert third[2]["chord"]["options"]["task_id"] == flow.steps[3].task_id


def test_a_later_step_takes_no_expires_with_rabbitmq() -> None:
    body = {"chain": [add(1, expires=60), add(2, expires=60)]}
    with pytest.raises(InvalidInput) as caught:
        parse_workflow(body, str(uuid.uuid4()), amqp=True)
    assert caught.value.details["field"] == "chain[1].expires"
    parse_workflow(body, str(uuid.uuid4()))  # with Redis it is honoured
    parse_workflow({"chain": [add(1, expires=60)]}, str(uuid.uuid4()), amqp=True)
