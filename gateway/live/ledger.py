"""``task`` events to users' rooms, each snapshot at most once per socket and never an older one
after a newer.

A socket gets a task's snapshots from three places: live updates from the relay, the snapshots
read from the records when it connects or sends ``watch`` (catch-up), and the relay's resync after
it lost pub/sub. They race. A catch-up read can return a PENDING record whose PENDING update the
relay is about to deliver as well; a resync re-sends what pub/sub already delivered; on RabbitMQ
a task's PENDING update is announced after the broker confirmed, which can be after the task
ended. The contract lets clients drop an update whose ``seq`` is not above the last they applied,
but the gateway should not send what it knows is old.

So ``TaskEvents`` keeps, per user room, the last ``seq`` it sent of each task and when (a count
of the room's sends), and

- ``to_user`` (the relay, resync) sends an update only when its ``seq`` is above the last one
  sent to that room;
- ``catch_up`` (connect, ``watch``) sends a snapshot newer than the room's last to the whole
  room (it is news for the user's other sockets too, and the relay's copy of it is then
  dropped); one the room was last sent before this socket joined only to this socket (it missed
  it), once; and nothing when the room was sent it, or newer, after the socket joined. What a
  client asks for with ``watch`` it gets (it says what it has: the contract's rule), to itself
  when it is not news for the room.

A room's entries go with its last socket (``forget``). A room keeps at most ``max_tasks``
entries, the oldest sent dropped first: then a late copy of such a task may be sent again,
which the client's ``seq`` rule absorbs.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.live.fanout import Fanout, user_room
from shared.schema import Snapshot

MAX_TASKS_PER_ROOM = 10_000


class TaskEvents:
    def __init__(self, fanout: Fanout, max_tasks: int = MAX_TASKS_PER_ROOM) -> None:
        self.fanout = fanout
        self.max_tasks = max_tasks
        # room -> task id -> (seq, the room's send count when it was sent)
        self._sent: dict[str, dict[str, tuple[int, int]]] = {}
        self._sends = 0
        # sid -> task id -> seq: what a socket was sent alone (it had missed the room's send)
        self._own: dict[str, dict[str, int]] = {}
        # Updates not sent because the room had them already (or newer).
        self.dropped = 0

    def joined(self) -> int:
        """The point a socket joined its room at: call it right after ``enter_room``."""
        return self._sends

    def _record(self, room: str, task_id: str, seq: int) -> None:
        sent = self._sent.get(room)
        if sent is None:
            sent = self._sent[room] = {}
        elif task_id in sent:
            del sent[task_id]  # re-inserted last: the dict stays in send order
        elif len(sent) >= self.max_tasks:
            del sent[next(iter(sent))]
        self._sends += 1
        sent[task_id] = (seq, self._sends)

    def _last(self, room: str, task_id: str) -> tuple[int, int] | None:
        sent = self._sent.get(room)
        return None if sent is None else sent.get(task_id)

    async def to_user(self, owner: str, snap: Snapshot) -> bool:
        """Send ``snap`` to ``owner``'s room unless it was sent that or a newer one."""
        room = user_room(owner)
        if not self.fanout.occupied(room):
            return False
        task_id, seq = snap["task_id"], snap["seq"]
        last = self._last(room, task_id)
        if last is not None and last[0] >= seq:
            self.dropped += 1
            return False
        self._record(room, task_id, seq)
        await self.fanout.to_room(room, "task", snap)
        return True

    async def catch_up(
        self, sid: str, owner: str, joined: int, snaps: Iterable[Snapshot], *, asked: bool = False
    ) -> int:
        """Send a socket that joined ``owner``'s room at ``joined`` the snapshots it lacks of
        ``snaps`` (read from the records after it joined); returns how many it was sent.
        ``asked``: the client asked for them (``watch``, saying which seq it has), so each is
        sent whatever this socket was sent before."""
        room = user_room(owner)
        sent = 0
        for snap in snaps:
            task_id, seq = snap["task_id"], snap["seq"]
            last = self._last(room, task_id)
            if last is None or seq > last[0]:
                self._record(room, task_id, seq)
                await self.fanout.to_room(room, "task", snap)
            elif asked or (last[1] <= joined and self._own.get(sid, {}).get(task_id, 0) < seq):
                self._own.setdefault(sid, {})[task_id] = seq
                await self.fanout.to_room(sid, "task", snap)
            else:
                self.dropped += 1
                continue
            sent += 1
        return sent

    def forget(self, owner: str, leaving: str) -> None:
        """Drop what was sent to ``owner``'s room when the socket ``leaving`` (whose disconnect
        handler calls this, before python-socketio takes it out of its rooms) is its last."""
        self._own.pop(leaving, None)
        room = user_room(owner)
        if all(sid == leaving for sid in self.fanout.members(room)):
            self._sent.pop(room, None)

    def rooms(self) -> int:
        """How many rooms have entries (for tests and metrics)."""
        return len(self._sent)
