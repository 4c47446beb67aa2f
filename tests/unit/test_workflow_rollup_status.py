"""A workflow's status from its children's (``gateway.tasks.workflows.rollup_status``)."""

from __future__ import annotations

import pytest

from gateway.tasks.workflows import rollup_status


@pytest.mark.parametrize(
    ("children", "status"),
    [
        (["COMPLETED", "COMPLETED"], "COMPLETED"),
        # A child whose record expired says nothing of how it ended: the others decide.
        (["EXPIRED", "COMPLETED"], "COMPLETED"),
        (["EXPIRED", "CANCELLED", "COMPLETED"], "CANCELLED"),
        (["FAILED", "CANCELLED", "COMPLETED"], "FAILED"),
        (["TIMED_OUT", "COMPLETED"], "TIMED_OUT"),
        (["COMPLETED", "PENDING"], "RUNNING"),
        (["RETRYING", "PENDING"], "RUNNING"),
        (["PENDING", "PENDING"], "PENDING"),
        (["EXPIRED", "PENDING"], "PENDING"),
    ],
)
def test_rollup_status(children: list[str], status: str) -> None:
    assert rollup_status(children) == status
