"""Where an update goes: the ``UpdateRouter`` the relay hands every update to.

An update from pub/sub wakes whoever waits for its task's end (``TaskService.notify``), goes to
the owner's room as a ``task`` event, and, for a workflow's child, schedules a roll-up of the
workflow for the owner. ``listening`` lets the relay drop, unparsed, an update that would do
none of that here; ``resync`` re-sends connected users their live tasks from the records after
the relay lost its connection (pub/sub may have dropped updates meanwhile). Both send through
``TaskEvents``, which drops what a room was already sent.
"""

from __future__ import annotations

from gateway.live.fanout import USER_ROOM
from gateway.live.ledger import TaskEvents
from gateway.live.workflow_rollup import WorkflowNotifier
from gateway.tasks.service import TaskService
from shared.schema import Update


class UpdateRouter:
    def __init__(
        self,
        service: TaskService,
        events: TaskEvents | None = None,
        notifier: WorkflowNotifier | None = None,
    ) -> None:
        self.service = service
        self.events = events
        self.notifier = notifier

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
        await self.events.to_user(update["owner"], snap)
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
