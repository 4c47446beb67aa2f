"""Simulated workers: processes that publish progress updates at a paced rate.

``lua`` runs the real record TRANSITION script (``shared.records``), pipelined, exactly as a
worker's ``ctx.progress`` does, so the channel carries exactly what real workers publish.
``publish`` is a bare ``PUBLISH`` of an update of the same shape (the floor of P4).
``psio`` emits the same snapshot through python-socketio's ``AsyncRedisManager`` from this
external process (the baseline of P3). Every update carries ``progress.data.t``, the wall-clock
time it was sent, from which clients compute lag.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import time
import uuid
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

import orjson

from shared.keys import Keys
from shared.records import (
    CREATE_LUA,
    TRANSITION_LUA,
    create_call,
    new_record_fields,
    transition_call,
)
from shared.redis_client import sync_client
from shared.schema import SCHEMA_VERSION
from shared.status import TaskStatus

TICK_S = 0.002
MAX_BATCH = 256
PSIO_CHANNEL = "bench-socketio"


def prepare_running_tasks(redis_url: str, prefix: str, users: list[str]) -> list[tuple[str, str]]:
    """One RUNNING task per user, made with the real CREATE and TRANSITION scripts."""
    client = sync_client(redis_url)
    keys = Keys(prefix)
    create = client.register_script(CREATE_LUA)
    transition = client.register_script(TRANSITION_LUA)
    tasks = [(str(uuid.uuid4()), u) for u in users]
    now = time.time()
    for start in range(0, len(tasks), 1000):
        chunk = tasks[start : start + 1000]
        with client.pipeline(transaction=False) as pipe:
            for tid, user in chunk:
                fields = new_record_fields(tid, "demo.count", "fast", now)
                call = create_call(keys, user, fields, 0, 86400)
                create(keys=call.keys, args=call.args, client=pipe)
            pipe.execute()
        with client.pipeline(transaction=False) as pipe:
            for tid, _ in chunk:
                call = transition_call(
                    keys,
                    tid,
                    86400,
                    "status",
                    status=TaskStatus.RUNNING,
                    fields={"started_at": now},
                )
                transition(keys=call.keys, args=call.args, client=pipe)
            pipe.execute()
    client.close()
    return tasks


def _snapshot(tid: str, seq: int, t: float) -> dict[str, Any]:
    return {
        "task_id": tid,
        "task": "demo.count",
        "queue": "fast",
        "status": "RUNNING",
        "seq": seq,
        "progress": {"percent": 50.0, "message": "step", "data": {"t": t}},
        "result": None,
        "error": None,
        "created_at": t,
        "started_at": t,
        "finished_at": None,
    }


def _steps(rate: float, duration: float, cap: int) -> Iterator[int]:
    """The pacing shared by the publishers: per step, how many updates are due now (at most
    ``cap``; 0 means wait ``TICK_S`` first), for ``duration`` seconds at ``rate`` per second."""
    start = time.monotonic()
    sent = 0
    while (elapsed := time.monotonic() - start) < duration:
        due = min(int(rate * elapsed) - sent, cap)
        if due <= 0:
            yield 0
            continue
        sent += due
        yield due


def _pace(rate: float, duration: float, send_batch: Any) -> tuple[int, float]:
    start = time.monotonic()
    sent = 0
    for n in _steps(rate, duration, MAX_BATCH):
        if n == 0:
            time.sleep(TICK_S)
            continue
        send_batch(n)
        sent += n
    return sent, time.monotonic() - start


def _run_sync(conn: Connection, mode: str, redis_url: str, prefix: str, tasks: list[Any]) -> None:
    client = sync_client(redis_url)
    keys = Keys(prefix)
    transition = client.register_script(TRANSITION_LUA)
    channel = keys.progress_channel
    cursor = 0
    seq = 0

    def send_batch(n: int) -> None:
        nonlocal cursor, seq
        t = time.time()
        with client.pipeline(transaction=False) as pipe:
            for _ in range(n):
                tid, owner = tasks[cursor]
                cursor = (cursor + 1) % len(tasks)
                if mode == "lua":
                    call = transition_call(
                        keys,
                        tid,
                        86400,
                        "progress",
                        percent=50.0,
                        fields={"progress": {"percent": 50.0, "message": "step", "data": {"t": t}}},
                    )
                    transition(keys=call.keys, args=call.args, client=pipe)
                else:
                    seq += 1
                    msg = {"v": SCHEMA_VERSION, "owner": owner, "snapshot": _snapshot(tid, seq, t)}
                    pipe.publish(channel, orjson.dumps(msg))
            pipe.execute()

    conn.send(("ready", None))
    while True:
        cmd, arg = conn.recv()
        if cmd == "run":
            rate, duration = arg
            conn.send(("done", _pace(rate, duration, send_batch)))
        elif cmd == "close":
            client.close()
            conn.send(("closed", None))
            return


async def _run_psio(conn: Connection, redis_url: str, tasks: list[Any]) -> None:
    import socketio

    mgr = socketio.AsyncRedisManager(redis_url, channel=PSIO_CHANNEL, write_only=True)
    loop = asyncio.get_running_loop()
    cursor = 0
    seq = 0

    async def send_batch(n: int) -> None:
        nonlocal cursor, seq
        t = time.time()
        emits = []
        for _ in range(n):
            tid, owner = tasks[cursor]
            cursor = (cursor + 1) % len(tasks)
            seq += 1
            emits.append(mgr.emit("task", _snapshot(tid, seq, t), room=f"user:{owner}"))
        await asyncio.gather(*emits)

    async def pace(rate: float, duration: float) -> tuple[int, float]:
        start = time.monotonic()
        sent = 0
        for n in _steps(rate, duration, 64):
            if n == 0:
                await asyncio.sleep(TICK_S)
                continue
            await send_batch(n)
            sent += n
        return sent, time.monotonic() - start

    conn.send(("ready", None))
    while True:
        cmd, arg = await loop.run_in_executor(None, conn.recv)
        if cmd == "run":
            conn.send(("done", await pace(*arg)))
        elif cmd == "close":
            conn.send(("closed", None))
            return


def _child(conn: Connection, mode: str, redis_url: str, prefix: str, tasks: list[Any]) -> None:
    if mode == "psio":
        try:
            import uvloop

            uvloop.run(_run_psio(conn, redis_url, tasks))
        except ImportError:
            asyncio.run(_run_psio(conn, redis_url, tasks))
    else:
        _run_sync(conn, mode, redis_url, prefix, tasks)


class Publishers:
    """``n`` publisher processes sharing a total rate."""

    def __init__(
        self, mode: str, redis_url: str, prefix: str, tasks: list[tuple[str, str]], n: int = 1
    ) -> None:
        ctx = mp.get_context("spawn")
        self.procs: list[tuple[Any, Connection]] = []
        for i in range(n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_child, args=(child, mode, redis_url, prefix, tasks[i::n]), daemon=True
            )
            proc.start()
            self.procs.append((proc, parent))
        for _, conn in self.procs:
            if not conn.poll(60):
                raise TimeoutError("publisher did not start")
            conn.recv()

    def run(self, rate: float, duration: float) -> dict[str, float]:
        """Publish at ``rate`` per second in total for ``duration`` seconds; block until done."""
        for _, conn in self.procs:
            conn.send(("run", (rate / len(self.procs), duration)))
        sent = 0
        seconds = 0.0
        for _, conn in self.procs:
            if not conn.poll(duration + 60):
                raise TimeoutError("publisher did not finish")
            _, (n, s) = conn.recv()
            sent += n
            seconds = max(seconds, s)
        return {"sent": float(sent), "seconds": seconds, "rate": sent / seconds if seconds else 0}

    def close(self) -> None:
        for _, conn in self.procs:
            with contextlib.suppress(Exception):
                conn.send(("close", None))
                conn.poll(10) and conn.recv()
        for proc, conn in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
            conn.close()
        self.procs = []
