"""A light Engine.IO 4 / Socket.IO 5 websocket client, many per process, for load.

One client process holds many connections on one uvloop loop and is driven by its parent over a
pipe: ``connect``, ``window`` (start counting afresh), ``collect`` (counts and lag samples since
``window``), ``close``. ``mode`` is ``sio`` (a Socket.IO server: handshake, auth, ``2``/``3``
pings) or ``raw`` (a plain websocket server sending the same ``42["task",{...}]`` frames).

Lag is ``time.time()`` at receipt minus ``progress.data.t`` that the publisher stamped into the
update; publishers and clients share the machine's clock.

``received`` counts, and ``lags`` time, only the publishers' updates: ``task`` events with a
stamp that are not the gateway's own news of a record. The gateway also sends ``task`` events
that no publisher sent: the snapshots a socket gets on connect, and the stall watch's mark
(``"stalled": true``, seq bumped, ``gateway/tasks/stalls.py``) on a bench task that no worker
beats for, which carries the stamp of the task's previous update, so its "lag" would be the age
of that update (up to a round of the publishers over every task: 10 s at 10,000 tasks and
1,000/s). Those are counted apart: ``unstamped`` and ``stalled``. ``stale_seq`` counts events
whose ``seq`` was not above the last one this connection got of that task (duplicates, or an
older after a newer), which the gateway promises never to send (``gateway/live/ledger.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import time
from array import array
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import aiohttp
import orjson

from bench.harness import SECRET, raise_fd_limit


@dataclass
class ClientSpec:
    base_url: str  # http://127.0.0.1:PORT
    mode: str  # "sio" or "raw"
    users: list[str]
    local_addr: str | None = None
    connect_parallel: int = 64
    path: str = "/socket.io/"
    # Offer permessage-deflate as browsers do (15); BENCH_WS_COMPRESS=0 turns it off.
    compress: int = int(os.environ.get("BENCH_WS_COMPRESS", "15"))


@dataclass
class Counters:
    received: int = 0
    unstamped: int = 0
    stalled: int = 0
    stale_seq: int = 0
    heartbeats: int = 0
    pings: int = 0
    disconnects: int = 0
    lags: array = field(default_factory=lambda: array("d"))
    per_conn_heartbeats: dict[int, int] = field(default_factory=dict)
    per_conn_pings: dict[int, int] = field(default_factory=dict)
    first_running: dict[str, float] = field(default_factory=dict)


class Swarm:
    def __init__(self, spec: ClientSpec) -> None:
        self.spec = spec
        self.counters = Counters()
        self.connected = 0
        self.failed = 0
        self.errors: dict[str, int] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.sockets: list[aiohttp.ClientWebSocketResponse] = []
        self.session: aiohttp.ClientSession | None = None
        self.watch_running = False
        # (connection, task id) -> the last seq it was sent; kept across windows.
        self.last_seq: dict[tuple[int, str], int] = {}

    async def open(self) -> None:
        local = (self.spec.local_addr, 0) if self.spec.local_addr else None
        connector = aiohttp.TCPConnector(limit=0, local_addr=local, force_close=True)
        self.session = aiohttp.ClientSession(connector=connector)

    async def connect_all(self, timeout: float) -> dict[str, Any]:
        from gateway.auth import issue_token
        from shared.settings import Secret

        secret = Secret(SECRET)
        sem = asyncio.Semaphore(self.spec.connect_parallel)
        started = time.monotonic()

        async def one(user: str) -> None:
            async with sem:
                token = issue_token(secret, user) if self.spec.mode == "sio" else ""
                try:
                    async with asyncio.timeout(timeout):
                        ws = await self._handshake(user, token)
                except Exception as exc:
                    self.failed += 1
                    name = type(exc).__name__
                    self.errors[name] = self.errors.get(name, 0) + 1
                    return
                self.connected += 1
                self.sockets.append(ws)
                self.tasks.append(asyncio.create_task(self._read(ws, len(self.sockets))))

        await asyncio.gather(*(one(u) for u in self.spec.users))
        return {
            "connected": self.connected,
            "failed": self.failed,
            "errors": self.errors,
            "seconds": time.monotonic() - started,
        }

    async def _handshake(self, user: str, token: str) -> aiohttp.ClientWebSocketResponse:
        assert self.session is not None
        if self.spec.mode == "raw":
            url = f"{self.spec.base_url}/ws?user={user}"
            return await self.session.ws_connect(
                url, autoping=True, heartbeat=None, compress=self.spec.compress
            )
        url = f"{self.spec.base_url}{self.spec.path}?EIO=4&transport=websocket"
        ws = await self.session.ws_connect(
            url, autoping=True, heartbeat=None, compress=self.spec.compress
        )
        opening = await ws.receive_str()
        if not opening.startswith("0"):
            raise ConnectionError(f"unexpected open packet {opening[:40]!r}")
        await ws.send_str("40" + orjson.dumps({"token": token}).decode())
        while True:
            msg = await ws.receive_str()
            if msg.startswith("40"):
                return ws
            if msg.startswith("44"):
                raise ConnectionRefusedError(msg[2:200])
            if msg == "2":
                await ws.send_str("3")

    async def _read(self, ws: aiohttp.ClientWebSocketResponse, idx: int) -> None:
        loads = orjson.loads
        wall = time.time
        try:
            async for msg in ws:
                c = self.counters
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data: str = msg.data
                if data == "2":
                    c.pings += 1
                    c.per_conn_pings[idx] = c.per_conn_pings.get(idx, 0) + 1
                    await ws.send_str("3")
                    continue
                if not data.startswith("42"):
                    continue
                now = wall()
                event, payload = loads(data[2:])[:2]
                if event == "task":
                    key = (idx, payload.get("task_id"))
                    seq = payload.get("seq")
                    if isinstance(seq, int):
                        if seq <= self.last_seq.get(key, -1):
                            c.stale_seq += 1
                        else:
                            self.last_seq[key] = seq
                    t = ((payload.get("progress") or {}).get("data") or {}).get("t")
                    if payload.get("stalled") is True:
                        c.stalled += 1
                    elif t is None:
                        c.unstamped += 1
                    else:
                        c.received += 1
                        c.lags.append(now - t)
                    if (
                        self.watch_running
                        and payload.get("status") == "RUNNING"
                        and payload["task_id"] not in c.first_running
                    ):
                        c.first_running[payload["task_id"]] = now
                elif event == "heartbeat":
                    c.heartbeats += 1
                    c.per_conn_heartbeats[idx] = c.per_conn_heartbeats.get(idx, 0) + 1
        except Exception:  # a dropped connection is counted below, whatever its cause
            pass
        self.counters.disconnects += 1

    def window(self) -> None:
        self.counters = Counters(disconnects=self.counters.disconnects)

    def collect(self) -> dict[str, Any]:
        c = self.counters
        return {
            "received": c.received,
            "unstamped": c.unstamped,
            "stalled": c.stalled,
            "stale_seq": c.stale_seq,
            "heartbeats": c.heartbeats,
            "pings": c.pings,
            "disconnects": c.disconnects,
            "open": sum(1 for ws in self.sockets if not ws.closed),
            "lags": c.lags.tobytes(),
            "first_running": dict(c.first_running),
            "min_heartbeats": min(
                (c.per_conn_heartbeats.get(i + 1, 0) for i in range(len(self.sockets))), default=0
            ),
            "min_pings": min(
                (c.per_conn_pings.get(i + 1, 0) for i in range(len(self.sockets))), default=0
            ),
        }

    async def close(self) -> None:
        for ws in self.sockets:
            with contextlib.suppress(Exception):
                await ws.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.session is not None:
            await self.session.close()


async def _serve(conn: Connection, spec: ClientSpec) -> None:
    swarm = Swarm(spec)
    await swarm.open()
    loop = asyncio.get_running_loop()
    conn.send(("ready", None))
    while True:
        cmd, arg = await loop.run_in_executor(None, conn.recv)
        if cmd == "connect":
            conn.send(("connected", await swarm.connect_all(arg)))
        elif cmd == "window":
            swarm.window()
            conn.send(("ok", None))
        elif cmd == "watch_running":
            swarm.watch_running = True
            conn.send(("ok", None))
        elif cmd == "collect":
            conn.send(("collected", swarm.collect()))
        elif cmd == "close":
            await swarm.close()
            conn.send(("closed", None))
            return


def _child(conn: Connection, spec: ClientSpec) -> None:
    raise_fd_limit()
    try:
        import uvloop

        uvloop.run(_serve(conn, spec))
    except ImportError:
        asyncio.run(_serve(conn, spec))


class ClientPool:
    """Client processes spread over several 127.0.0.x source addresses."""

    def __init__(
        self,
        base_url: str,
        mode: str,
        users: list[str],
        processes: int,
        *,
        spread_addrs: bool = False,
        connect_parallel: int = 64,
    ) -> None:
        ctx = mp.get_context("spawn")
        self.procs: list[tuple[Any, Connection]] = []
        self.n_users = len(users)
        for i in range(processes):
            part = users[i::processes]
            addr = f"127.0.0.{2 + i}" if spread_addrs else None
            spec = ClientSpec(base_url, mode, part, addr, connect_parallel)
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_child, args=(child, spec), daemon=True)
            proc.start()
            self.procs.append((proc, parent))
        for _, conn in self.procs:
            self._expect(conn, "ready", 60)

    @staticmethod
    def _expect(conn: Connection, what: str, timeout: float) -> Any:
        if not conn.poll(timeout):
            raise TimeoutError(f"client process did not answer {what!r} in {timeout}s")
        tag, value = conn.recv()
        if tag != what:
            raise RuntimeError(f"client process answered {tag!r}, not {what!r}")
        return value

    def _all(self, cmd: str, arg: Any, answer: str, timeout: float) -> list[Any]:
        for _, conn in self.procs:
            conn.send((cmd, arg))
        return [self._expect(conn, answer, timeout) for _, conn in self.procs]

    def connect(self, timeout: float = 120.0) -> dict[str, Any]:
        started = time.monotonic()
        parts = self._all("connect", 30.0, "connected", timeout)
        errors: dict[str, int] = {}
        for p in parts:
            for k, v in p["errors"].items():
                errors[k] = errors.get(k, 0) + v
        return {
            "connected": sum(p["connected"] for p in parts),
            "failed": sum(p["failed"] for p in parts),
            "errors": errors,
            "seconds": time.monotonic() - started,
        }

    def window(self) -> None:
        self._all("window", None, "ok", 30)

    def watch_running(self) -> None:
        self._all("watch_running", None, "ok", 30)

    def collect(self) -> dict[str, Any]:
        parts = self._all("collect", None, "collected", 60)
        lags = array("d")
        first: dict[str, float] = {}
        for p in parts:
            lags.frombytes(p["lags"])
            first.update(p["first_running"])
        return {
            "received": sum(p["received"] for p in parts),
            "unstamped": sum(p["unstamped"] for p in parts),
            "stalled": sum(p["stalled"] for p in parts),
            "stale_seq": sum(p["stale_seq"] for p in parts),
            "heartbeats": sum(p["heartbeats"] for p in parts),
            "pings": sum(p["pings"] for p in parts),
            "disconnects": sum(p["disconnects"] for p in parts),
            "open": sum(p["open"] for p in parts),
            "lags": list(lags),
            "first_running": first,
            "min_heartbeats": min((p["min_heartbeats"] for p in parts), default=0),
            "min_pings": min((p["min_pings"] for p in parts), default=0),
        }

    def close(self, graceful: bool = True) -> None:
        """Close every connection (``graceful``: websocket close handshakes) and end the
        client processes; without ``graceful`` the processes are killed, which drops their
        sockets at once (what 10,000 clients need to leave quickly)."""
        if graceful:
            with contextlib.suppress(Exception):
                self._all("close", None, "closed", 60)
        else:
            for proc, _ in self.procs:
                proc.kill()
        for proc, conn in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
            conn.close()
        self.procs = []
