"""``workflow_percent.lua`` alone against the real redis-server: the mark only rises."""

from __future__ import annotations

import redis

from gateway.tasks.workflows import WORKFLOW_PERCENT_LUA, percent_call
from shared.keys import Keys


def test_the_mark_only_rises_and_a_gone_workflow_is_not_written(
    client: redis.Redis, keys: Keys
) -> None:
    script = client.register_script(WORKFLOW_PERCENT_LUA)

    def show(wid: str, percent: float) -> float:
        call = percent_call(keys, wid, percent)
        return float(script(keys=call.keys, args=call.args))

    client.hset(keys.workflow("w1"), mapping={"owner": "u"})
    assert show("w1", 20.0) == 20.0
    assert show("w1", 12.5) == 20.0  # a child retried: its percent started again
    assert show("w1", 20.0) == 20.0
    assert show("w1", 62.5) == 62.5
    assert client.hget(keys.workflow("w1"), "percent") == b"62.5"
    assert show("gone", 30.0) == 30.0
    assert not client.exists(keys.workflow("gone"))
