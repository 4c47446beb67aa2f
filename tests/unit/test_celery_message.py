"""The gateway's hand-built messages match what Celery itself would send (protocol 2). Nothing
is sent: the brokers and the Celery app are built, never connected."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

from gateway.broker.message import build_task_message
from gateway.broker.redis_broker import RedisBroker, redis_priority
from shared.settings import Settings
from shared.task_input import InputModel, NoInput
from tests.support import offline_env
from worker.celery_app import make_celery


def test_headers_and_body_match_celery_as_task_v2() -> None:
    app = make_celery(Settings.from_env(offline_env()))
    task_id = str(uuid.uuid4())
    kwargs = {"steps": 3, "delay": 0.1}
    theirs = app.amqp.as_task_v2(task_id, "demo.count", args=(), kwargs=kwargs)
    ours = build_task_message(task_id, "demo.count", "fast", kwargs=kwargs)
    # Celery's headers exactly, plus taskgate's own mark (a worker never adopts such a message
    # without its record: worker/adopt.py).
    assert set(ours.headers) == set(theirs.headers) | {"taskgate_record"}
    assert ours.headers["taskgate_record"] is True
    for key in ("lang", "task", "id", "root_id", "parent_id", "retries", "eta", "expires"):
        assert ours.headers[key] == theirs.headers[key], key
    assert json.loads(ours.body) == json.loads(json.dumps(theirs.body))


def test_redis_envelope_is_what_kombu_pushes() -> None:
    settings = Settings.from_env(offline_env())  # the broker is built, never connected
    broker = RedisBroker(settings.require_redis(), settings.keys.broker_prefix)
    msg = build_task_message(
        str(uuid.uuid4()), "demo.count", "fast", kwargs={"steps": 1}, priority=9
    )
    envelope = json.loads(msg.redis_envelope(redis_priority(msg.priority)))
    assert envelope["content-type"] == "application/json"
    assert envelope["properties"]["body_encoding"] == "base64"
    assert envelope["properties"]["delivery_info"] == {"exchange": "", "routing_key": "fast"}
    assert json.loads(base64.b64decode(envelope["body"])) == [[], {"steps": 1}, {
        "callbacks": None, "errbacks": None, "chain": None, "chord": None,
    }]  # fmt: skip
    # Priority 9 (most urgent) lands on kombu's first list, the plain queue key.
    assert broker.queue_key("fast", redis_priority(9)) == f"{settings.keys.broker_prefix}fast"
    assert broker.queue_key("fast", redis_priority(0)).endswith("fast\x06\x169")


def test_a_task_types_own_limits_travel_in_the_timelimit_header() -> None:
    from gateway.tasks.submission import Submission, build_message
    from shared.registry import TaskSpec

    def limited(ctx: Any) -> None:
        return None

    # Built, not registered: the registry of this test process stays as the task modules left it.
    spec = TaskSpec(
        "unit.limited", limited, InputModel.of(NoInput), soft_time_limit=3, time_limit=5
    )
    assert build_message(Submission(spec, {}, "fast", 0, None), "t-1").headers["timelimit"] == [
        5,
        3,
    ]
    plain = TaskSpec("unit.plain", limited, InputModel.of(NoInput))
    assert build_message(Submission(plain, {}, "fast", 0, None), "t-2").headers["timelimit"] == [
        None,
        None,
    ]
