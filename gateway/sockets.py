"""Socket.IO: auth on connect, one room per user, ``submit``/``cancel``/``watch`` with acks."""

from __future__ import annotations

import logging
from typing import Any

import socketio

from gateway.auth import verify_token
from gateway.manager import TaskManager
from shared.errors import AuthError, TaskgateError
from shared.schema import Snapshot
from shared.settings import Secret

log = logging.getLogger("taskgate.sockets")


def user_room(user: str) -> str:
    return f"user:{user}"


def _error(exc: Exception) -> dict[str, Any]:
    if isinstance(exc, TaskgateError):
        return exc.to_dict()
    log.exception("socket event failed")
    return {"error": {"code": "internal", "message": "internal error"}}


def register_socket_handlers(
    sio: socketio.AsyncServer, manager: TaskManager, secret: Secret
) -> None:
    async def user_of(sid: str) -> str:
        session = await sio.get_session(sid)
        user: str = session["user"]
        return user

    async def send_snapshots(sid: str, snaps: list[Snapshot]) -> None:
        for snap in snaps:
            await sio.emit("task", snap, to=sid)

    @sio.event  # type: ignore[untyped-decorator]
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        token = auth.get("token") if isinstance(auth, dict) else None
        try:
            identity = verify_token(secret, token)
        except AuthError as exc:
            raise socketio.exceptions.ConnectionRefusedError(exc.message) from None
        await sio.save_session(sid, {"user": identity.user, "exp": identity.expires_at})
        await sio.enter_room(sid, user_room(identity.user))
        # Sent after the handshake completes, so the client has its handlers in place.
        sio.start_background_task(_send_live, sid, identity.user)

    async def _send_live(sid: str, user: str) -> None:
        try:
            await send_snapshots(sid, await manager.live(user))
        except Exception:
            log.exception("could not send connect-time snapshots to %s", user)

    @sio.event  # type: ignore[untyped-decorator]
    async def submit(sid: str, data: Any = None) -> dict[str, Any]:
        try:
            snap = await manager.submit(await user_of(sid), data)
        except Exception as exc:
            return _error(exc)
        return {"task_id": snap["task_id"], "status": snap["status"], "seq": snap["seq"]}

    @sio.event  # type: ignore[untyped-decorator]
    async def cancel(sid: str, data: Any = None) -> dict[str, Any]:
        try:
            task_id = data.get("task_id") if isinstance(data, dict) else ""
            await manager.cancel(await user_of(sid), task_id)
        except Exception as exc:
            return _error(exc)
        return {"ok": True}

    @sio.event  # type: ignore[untyped-decorator]
    async def watch(sid: str, data: Any = None) -> dict[str, Any]:
        try:
            wanted = data.get("tasks") if isinstance(data, dict) else None
            snaps = await manager.watch(await user_of(sid), wanted)
        except Exception as exc:
            return _error(exc)
        await send_snapshots(sid, snaps)
        return {"ok": True, "sent": len(snaps)}
