"""Where an update goes: the ``UpdateRouter`` the relay hands every update to.

An update from pub/sub wakes whoever waits for its task's end (``TaskService.notify``), goes to
the owner's room as a ``task`` event, and, for a workflow's child, schedules a roll-up of the
workflow for the owner. ``listening`` lets the relay drop, unparsed, an update that would do
none of that here; ``resync`` re-sends connected users their live tasks from the records after
the relay lost its connection (pub/sub may have dropped updates meanwhile). Both send through
``TaskEvents``, which drops what a room was already sent.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.live.fanout import USER_ROOM
from gateway.live.ledger import TaskEvents
from gateway.live.workflow_rollup import WorkflowNotifier
from gateway.tasks.service import TaskService
from shared import tracing
from shared.schema import Update
from shared.tracing import TraceParent, span_id_of


class UpdateRouter:
    def __init__(
        self,
        service: TaskService,
        events: TaskEvents | None = None,
        notifier: WorkflowNotifier | None = None,
        *,
        lag: Callable[[float], None] | None = None,
    ) -> None:
        self.service = service
        self.events = events
        self.notifier = notifier
        # Told, for each update sent to sockets here, how long ago Redis published it.
        self.lag = lag

    def listening(self, owner: str) -> bool:
        """Does any update of ``owner`` matter here: a socket of theirs in this process, or a
        ``wait_result`` (which may be theirs)? Else ``deliver`` would do nothing."""
        if self.service.waiting:
            return True
        return self.events is not None and self.events.fanout.occupied(USER_ROOM + owner)

    async def deliver(self, update: Update) -> None:
        snap = update["snapshot"]
        self.service.notify(snap)
        if self.events is None:
            return
        trace_id = snap.get("trace_id")
        if trace_id and tracing.enabled():
            # The delivery, under the task's run (its parent: the span the task id names).
            parent = TraceParent(trace_id, span_id_of(snap["task_id"]))
            with tracing.span("delivery", parent, attributes={"taskgate.seq": snap["seq"]}):
                sent = await self.events.to_user(update["owner"], snap)
        else:
            sent = await self.events.to_user(update["owner"], snap)
        at = update.get("at")
        if sent and self.lag is not None and isinstance(at, float):
            self.lag(max(0.0, time.time() - at))
        workflow_id = snap.get("workflow_id")
        if workflow_id and self.notifier is not None:
            self.notifier.child_changed(update["owner"], workflow_id)

    async def resync(self) -> None:
        if self.events is None:
            return
        for room in self.events.fanout.rooms(USER_ROOM):
            owner = room[len(USER_ROOM) :]
            for snap in await self.service.live(owner):
                self.service.notify(snap)
                await self.events.to_user(owner, snap)
