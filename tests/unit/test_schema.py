"""Update messages on the wire (``shared.schema.decode_updates``): one snapshot or many."""

from __future__ import annotations

import orjson
import pytest

from shared.records import updates_head
from shared.schema import decode_updates


def test_update_messages_of_one_or_many_snapshots() -> None:
    snap = {"task_id": "t1", "seq": 1, "status": "PENDING"}
    one = orjson.dumps({"v": 1, "owner": "u", "snapshot": snap})
    assert decode_updates(one) == [{"v": 1, "owner": "u", "snapshot": snap, "at": None}]
    # The scripts stamp when Redis published it (publish.lua), for the delivery-lag metric.
    stamped = orjson.dumps({"v": 1, "owner": "u", "snapshot": snap, "at": 1796193638.5})
    assert decode_updates(stamped)[0]["at"] == 1796193638.5
    two = updates_head("u") + orjson.dumps(snap) + b"," + orjson.dumps({**snap, "task_id": "t2"})
    decoded = decode_updates(two + b"]}")
    assert [u["snapshot"]["task_id"] for u in decoded] == ["t1", "t2"]
    assert all(u["owner"] == "u" for u in decoded)
    for bad in (
        {"v": 1, "owner": "u", "snapshots": []},
        {"v": 1, "owner": "u", "snapshots": {"task_id": "t1"}},
        {"v": 1, "owner": "u", "snapshots": [snap, {"seq": 2}]},
        {"v": 1, "owner": "u", "snapshots": [snap, "x"]},
        {"v": 1, "snapshots": [snap]},
        {"v": 1, "owner": "u"},
    ):
        with pytest.raises(ValueError):
            decode_updates(orjson.dumps(bad))
