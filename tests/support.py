"""Helpers for tests against real parts: redis-server, Celery workers, Socket.IO clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import socketio
from aiohttp.test_utils import TestServer

from gateway.auth import issue_token
from gateway.cli.embedded import find_redis_server, free_port, stop_group, wait_for_port
from gateway.live.ledger import TaskEvents
from shared.settings import Secret, Settings

ROOT = Path(__file__).resolve().parent.parent
SECRET = "test-secret-" + "x" * 40
# What the fault tests' workers run with: short limits, so that faults resolve quickly (see
# tests/faults/test_faults.py). A unit test of the settings checks its limits too.
FAULT_ENV = {
    "TASKGATE_TASK_MODULES": "worker.demo,tests.faults.tasks_faults",
    "CELERY_TASK_SOFT_TIME_LIMIT": "6",
    "CELERY_TASK_TIME_LIMIT": "8",
    "TASKGATE_VISIBILITY_TIMEOUT_S": "10",
    "TASKGATE_TASK_HEARTBEAT_S": "0.5",
    "TASKGATE_MAX_ATTEMPTS": "3",
    "TASKGATE_SUBMIT_RATE": "0",
}
# Webhooks to a receiver on this machine, retried quickly.
WEBHOOK_ENV = {
    "TASKGATE_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1,localhost",
    "TASKGATE_WEBHOOK_ALLOW_PRIVATE": "1",
    "TASKGATE_WEBHOOK_BACKOFF_S": "0.2",
}


def make_token(user: str, ttl: float = 3600) -> str:
    """A token for ``user`` signed with the tests' ``SECRET``."""
    return issue_token(Secret(SECRET), user, ttl)


def auth(user: str) -> dict[str, str]:
    """HTTP headers that authenticate as ``user``."""
    return {"Authorization": f"Bearer {make_token(user)}"}


def end_process(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30
) -> int:
    """Ask ``proc`` to stop with ``sig`` (to its process group for SIGINT, as a terminal's
    Ctrl-C does), wait up to ``timeout``, else kill its group; its exit code (-9 if killed)."""
    if proc.poll() is not None:
        return proc.returncode
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        return -9


class RedisServer:
    """A real redis-server on loopback, in a folder of its own."""

    def __init__(self, data_dir: Path, port: int | None = None, appendonly: bool = True) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            find_redis_server(), "--bind", "127.0.0.1", "--port", str(self.port),
            "--dir", str(self.data_dir), "--save", "", "--daemonize", "no",
            "--appendonly", "yes" if self.appendonly else "no",
        ]  # fmt: skip
        log = open(self.data_dir / "redis.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for_port(self.port, 10, self.proc)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def base_env(redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("TASKGATE_", "CELERY_", "CORS_"))
    }
    env.update(
        {
            "TASKGATE_REDIS_URL": redis_url,
            "TASKGATE_SECRET": SECRET,
            "TASKGATE_KEY_PREFIX": prefix,
            "TASKGATE_LOG_LEVEL": "INFO",
            "PYTHONPATH": str(ROOT),
        }
    )
    env.update(extra)
    return env


def offline_env(**extra: str) -> dict[str, str]:
    """An environment for code that is built from settings but never connects (unit tests):
    its Redis URL names a closed port."""
    return base_env("redis://127.0.0.1:1/0", f"tg-unit-{uuid.uuid4().hex[:8]}:", **extra)


def fresh(env: Mapping[str, str], **extra: str) -> Settings:
    """Settings of ``env`` with a key prefix of their own (no worker consumes its queues)."""
    return Settings.from_env(
        {**env, "TASKGATE_KEY_PREFIX": f"fast-{uuid.uuid4().hex[:8]}:", **extra}
    )


class CeleryWorker:
    """An unmodified ``celery -A worker worker`` in its own process group."""

    def __init__(
        self,
        env: Mapping[str, str],
        log_dir: Path,
        queues: str = "fast,heavy",
        concurrency: int = 2,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.env = dict(env)
        self.name = f"w{uuid.uuid4().hex[:8]}"
        self.log = log_dir / f"{self.name}.log"
        self.queues = queues
        self.concurrency = concurrency
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> CeleryWorker:
        argv = [
            sys.executable, "-m", "celery", "-A", "worker", "worker",
            "-Q", self.queues, "-c", str(self.concurrency), "-n", f"{self.name}@%h",
            "--loglevel", "INFO", "--without-mingle", "--without-gossip", *self.extra_args,
        ]  # fmt: skip
        out = open(self.log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
            start_new_session=True,
        )  # fmt: skip
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log.read_text()[-3000:]}")
            if b" ready." in self.log.read_bytes():
                return self
            time.sleep(0.1)
        raise TimeoutError(f"worker not ready after {timeout}s:\n{self.log.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if self.proc is None:
            return
        stop_group(self.proc, timeout, sig)
        self.proc = None

    def pool_pids(self) -> list[int]:
        """Pids of the prefork pool's children."""
        assert self.proc is not None
        out = subprocess.run(
            ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True, check=False
        )
        return [int(p) for p in out.stdout.split()]


class SocketClient:
    """A python-socketio client that records every ``task`` event per task id."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.all_events: list[dict[str, Any]] = []
        self.heartbeats: list[dict[str, Any]] = []
        self._changed = asyncio.Event()

        @self.sio.on("task")
        async def on_task(data: dict[str, Any]) -> None:
            self.events[data["task_id"]].append(data)
            self.all_events.append(data)
            self._changed.set()

        @self.sio.on("heartbeat")
        async def on_heartbeat(data: dict[str, Any]) -> None:
            self.heartbeats.append(data)
            self._changed.set()

    async def connect(self) -> SocketClient:
        await self.sio.connect(
            self.url, auth={"token": self.token}, transports=["websocket"], wait_timeout=10
        )
        return self

    async def call(self, event: str, data: Any, timeout: float = 10.0) -> Any:
        return await self.sio.call(event, data, timeout=timeout)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def wait_terminal(self, task_id: str, timeout: float = 20.0) -> dict[str, Any]:
        terminal = {"COMPLETED", "FAILED", "TIMED_OUT", "CANCELLED"}
        await self.wait_for(
            lambda: any(e["status"] in terminal for e in self.events[task_id]), timeout
        )
        # The terminal update itself, not the last to arrive: on RabbitMQ the PENDING (seq 1)
        # is announced once the broker confirmed, which can be after a short task ended.
        return next(e for e in self.events[task_id] if e["status"] in terminal)

    async def close(self) -> None:
        await self.sio.disconnect()


class CatchUps:
    """The sockets a gateway has run a catch-up for (``TaskEvents.catch_up``), watched on the
    gateway's own ledger. The connect-time catch-up runs in the background after the handshake
    (``gateway.sockets.handlers``): its read can end after a short task did, and the ledger then
    rightly counts the task's snapshot dropped. A test that counts drops waits for it first."""

    def __init__(self, events: TaskEvents) -> None:
        self.done: set[str] = set()
        self._changed = asyncio.Event()
        real = events.catch_up

        async def observed(sid: str, *args: Any, **kwargs: Any) -> int:
            try:
                return await real(sid, *args, **kwargs)
            finally:
                self.done.add(sid)
                self._changed.set()

        events.catch_up = observed  # type: ignore[method-assign]

    async def wait(self, client: SocketClient, timeout: float = 10.0) -> None:
        """Until ``client``'s connect-time catch-up has run."""
        sid = client.sio.get_sid()
        async with asyncio.timeout(timeout):
            while sid not in self.done:
                self._changed.clear()
                await self._changed.wait()


def dead_pids(count: int) -> list[int]:
    """Pids of processes that ran and ended (reaped): pids nothing runs as."""
    pids: list[int] = []
    while len(pids) < count:
        proc = subprocess.Popen(["true"])
        proc.wait()
        if proc.pid not in pids:
            pids.append(proc.pid)
    return pids


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step)
    raise TimeoutError("condition not met in time")


@contextlib.contextmanager
def started(thing: Any) -> Iterator[Any]:
    thing.start()
    try:
        yield thing
    finally:
        thing.stop()


def find_rabbitmq_server() -> str | None:
    """Debian's rabbitmq-server start script (the one that does not switch user), if installed."""
    for candidate in ("/usr/lib/rabbitmq/bin/rabbitmq-server", shutil.which("rabbitmq-server")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


class _PortTaken(RuntimeError):
    """rabbitmq-server stopped at boot: one of its ports was in use."""


def _quiet_ports(count: int, low: int = 20000, high: int = 32000) -> list[int]:
    """``count`` distinct free loopback ports below the ephemeral range."""
    found: list[int] = []
    rng = random.Random()
    while len(found) < count:
        port = rng.randrange(low, high)
        if port in found:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
    return found


class RabbitServer:
    """A private rabbitmq-server on loopback: its own node name, ports, epmd, data and logs.

    Everything lives under ``data_dir`` (mnesia, logs, the Erlang cookie via ``HOME``); epmd is
    started here on a free port bound to 127.0.0.1, so nothing is shared with a system broker
    and ``stop()`` leaves no process behind. ``stop()`` then ``start()`` restarts the same node.
    """

    def __init__(self, data_dir: Path, timeout: float = 60.0) -> None:
        server = find_rabbitmq_server()
        if server is None:
            raise RuntimeError("rabbitmq-server is not installed (scripts/system-deps.sh)")
        self.server = server
        self.ctl = str(Path(server).with_name("rabbitmqctl"))
        self.data_dir = data_dir
        self.timeout = timeout
        self.port = self.dist_port = self.epmd_port = 0
        self._pick_ports()
        self.nodename = f"tg{uuid.uuid4().hex[:10]}@localhost"
        self.proc: subprocess.Popen[bytes] | None = None
        self.epmd: subprocess.Popen[bytes] | None = None
        self._has_started = False

    def _pick_ports(self) -> None:
        # Below the kernel's ephemeral range: a port that bind(0) hands out can be taken by any
        # outgoing connection before the broker binds it (RabbitMQ then stops at boot).
        self.port, self.dist_port, self.epmd_port = _quiet_ports(3)

    def url(self, vhost: str = "/") -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/{quote(vhost, safe='')}"

    def env(self) -> dict[str, str]:
        d = self.data_dir
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            {
                "HOME": str(d / "home"),
                "ERL_EPMD_ADDRESS": "127.0.0.1",
                "ERL_EPMD_PORT": str(self.epmd_port),
                "RABBITMQ_NODENAME": self.nodename,
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                "RABBITMQ_NODE_PORT": str(self.port),
                "RABBITMQ_DIST_PORT": str(self.dist_port),
                "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
                "RABBITMQ_LOG_BASE": str(d / "log"),
                "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
                "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
                "RABBITMQ_PLUGINS_EXPAND_DIR": str(d / "plugins-expand"),
                "RABBITMQ_FEATURE_FLAGS_FILE": str(d / "feature_flags"),
                "RABBITMQ_PID_FILE": str(d / "rabbitmq.pid"),
            }
        )
        return env

    def start(self, attempts: int = 3) -> RabbitServer:
        """Start (or restart) the node; a port taken meanwhile is retried, with new ports if
        the node never ran (a restart keeps its ports: clients have its URL)."""
        for attempt in range(attempts):
            try:
                self._start_once()
            except _PortTaken:
                if attempt == attempts - 1:
                    raise
                if self._has_started:
                    time.sleep(1.0)
                else:
                    self._pick_ports()
                continue
            self._has_started = True
            return self
        raise AssertionError("unreachable")

    def _start_once(self) -> None:
        d = self.data_dir
        for sub in ("home", "mnesia", "log"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "loopback_users = none\n"
            "disk_free_limit.absolute = 1MB\n"
        )
        (d / "enabled_plugins").write_text("[].\n")  # no management plugin, no extra ports
        env = self.env()
        out = d / "server.out"
        offset = out.stat().st_size if out.exists() else 0
        log = open(out, "ab")  # noqa: SIM115
        try:
            self.epmd = subprocess.Popen(
                ["epmd", "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
            wait_for_port(self.epmd_port, 10, self.epmd)
            self.proc = subprocess.Popen(
                [self.server], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=d,
                start_new_session=True,
            )  # fmt: skip
        finally:
            log.close()
        try:
            wait_for_port(self.port, self.timeout, self.proc)
        except (TimeoutError, RuntimeError) as exc:
            with open(out, "rb") as f:
                f.seek(offset)
                tail = f.read().decode(errors="replace")
            self.stop()
            if "already_used" in tail or "eaddrinuse" in tail:
                raise _PortTaken(tail[-2000:]) from exc
            raise RuntimeError(f"rabbitmq-server did not start: {exc}\n{tail[-3000:]}") from exc

    def ctl_run(self, *args: str, timeout: float = 30.0) -> str:
        """Run ``rabbitmqctl`` against this node."""
        out = subprocess.run(
            [self.ctl, "-n", self.nodename, *args],
            env=self.env(), capture_output=True, text=True, timeout=timeout, check=True,
        )  # fmt: skip
        return out.stdout

    def add_vhost(self, name: str) -> str:
        """A new virtual host that ``guest`` may use; returns its URL."""
        self.ctl_run("add_vhost", name)
        self.ctl_run("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        return self.url(name)

    def stop(self, timeout: float = 30.0) -> None:
        for attr in ("proc", "epmd"):
            proc: subprocess.Popen[bytes] | None = getattr(self, attr)
            if proc is None:
                continue
            # The start script traps SIGTERM, stops the node gracefully and waits for it;
            # beam.smp runs in the script's process group, and any straggler goes with it.
            stop_group(proc, timeout, whole_group=False)
            setattr(self, attr, None)


# ---- security tests (issue 4): a gateway of its own and what it left in Redis ----------------


def isolated_env(env: Mapping[str, str], **overrides: str) -> dict[str, str]:
    """``env`` with a fresh key prefix: no worker of the session consumes this gateway's queues,
    so whatever it publishes stays on the broker where a test can count it."""
    out = dict(env)
    out["TASKGATE_KEY_PREFIX"] = f"tg-iso-{uuid.uuid4().hex[:8]}:"
    out.update(overrides)
    return out


async def footprint(client: Any, prefix: str) -> dict[str, int]:
    """How many task records there are under ``prefix`` and how many messages wait on its
    broker queues (every list under ``<prefix>broker:``) or in the hold of delayed tasks.
    ``client`` is a redis.asyncio client made before blockbuster is on (a new connection reads
    package metadata from disk)."""
    records = 0
    async for _ in client.scan_iter(match=f"{prefix}task:*", count=1000):
        records += 1
    messages = 0
    async for key in client.scan_iter(match=f"{prefix}broker:*", count=1000):
        if await client.type(key) == b"list":
            messages += int(await client.llen(key))
    # A delayed submit's message waits in taskgate's hold until due (gateway.tasks.delayed).
    messages += int(await client.zcard(f"{prefix}delayed"))
    return {"records": records, "broker_messages": messages}


# ---- fault tests (issue 3): processes to kill, and what a client makes of its updates -------


class GatewayProcess:
    """``python -m gateway.cli.commands gateway`` in its own process group, on a port of its own."""

    def __init__(self, env: Mapping[str, str], log_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.env = {**env, "TASKGATE_PORT": str(self.port), "TASKGATE_HOST": "127.0.0.1"}
        self.log = log_dir / f"gateway-{self.port}-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> GatewayProcess:
        out = open(self.log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli.commands", "gateway"], env=self.env, stdout=out,
            stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
        )  # fmt: skip
        out.close()
        try:
            wait_for_port(self.port, timeout, self.proc)
        except (TimeoutError, RuntimeError) as exc:
            self.stop(signal.SIGKILL)
            tail = self.log.read_text()[-3000:]
            raise RuntimeError(f"gateway did not start: {exc}\n{tail}") from exc
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        stop_group(self.proc, timeout, sig)
        self.proc = None


def reconnecting(client: SocketClient) -> SocketClient:
    """Let a ``SocketClient`` reconnect on its own (quickly), as the JS client does."""
    client.sio.reconnection = True
    client.sio.reconnection_delay = 0.2
    client.sio.reconnection_delay_max = 1.0
    return client


def applied_updates(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a client following the contract applies: each update whose seq is above the last.

    Also checks what makes that rule safe: every copy of one seq is the same snapshot, so a
    copy dropped as a duplicate never hides a change.
    """
    by_seq: dict[int, dict[str, Any]] = {}
    applied: list[dict[str, Any]] = []
    last = 0
    for event in events:
        seen = by_seq.setdefault(event["seq"], event)
        assert seen == event, f"two different snapshots with seq {event['seq']}: {seen} {event}"
        if event["seq"] > last:
            applied.append(event)
            last = event["seq"]
    return applied


# The aiohttp_server fixture's type, and the task most tests submit.
ServerFactory = Callable[..., Awaitable[TestServer]]
COUNT = {"task": "demo.count", "input": {"steps": 1, "delay": 0}}


async def start_gateway(
    aiohttp_server: ServerFactory, settings: Settings
) -> tuple[TestServer, str]:
    """``serve_gateway``, with the base URL (ending in ``/``) beside the server."""
    server = await serve_gateway(aiohttp_server, settings)
    return server, str(server.make_url("/"))


async def gateway_apart(
    aiohttp_server: ServerFactory, env: Mapping[str, str], **overrides: str
) -> tuple[Settings, str]:
    """A gateway on a key prefix of its own (``isolated_env`` with ``overrides``), with no worker
    consuming its queues: its settings and base URL."""
    settings = Settings.from_env(isolated_env(env, **overrides))
    _, url = await start_gateway(aiohttp_server, settings)
    return settings, url


async def serve_gateway(aiohttp_server: Callable[..., Any], settings: Any) -> Any:
    """A gateway for ``settings`` on a real port, returned once its relay is subscribed.

    Waiting matters beyond readiness: a relay cancelled in the middle of SUBSCRIBE can hold up
    the app's shutdown for a long time."""
    from gateway.app import create_app
    from gateway.appkeys import RELAY

    server = await aiohttp_server(create_app(settings))
    async with asyncio.timeout(10):
        await server.app[RELAY].connected.wait()
    return server


_WS_ENDED = (
    aiohttp.WSMsgType.CLOSE,
    aiohttp.WSMsgType.CLOSING,
    aiohttp.WSMsgType.CLOSED,
    aiohttp.WSMsgType.ERROR,
)


class RawSocket:
    """A websocket speaking Engine.IO 4 by hand, for frames no proper client would send."""

    def __init__(
        self, ws: aiohttp.ClientWebSocketResponse, session: aiohttp.ClientSession | None
    ) -> None:
        self.ws = ws
        self._own_session = session
        self.opened_at = time.monotonic()

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        session: aiohttp.ClientSession | None = None,
        token: str | None = None,
        origin: str | None = None,
        autoping: bool = True,
    ) -> RawSocket:
        """Open a websocket to the gateway at ``url`` (on ``session``, else one of its own that
        ``close`` closes), read Engine.IO's OPEN and, given a ``token``, complete a CONNECT."""
        client = session or aiohttp.ClientSession()
        own = client if session is None else None
        try:
            ws = await client.ws_connect(
                url + "socket.io/?EIO=4&transport=websocket",
                headers={"Origin": origin} if origin else {},
                max_msg_size=0,
                autoping=autoping,
                timeout=aiohttp.ClientWSTimeout(ws_close=5),
            )
        except BaseException:
            if own is not None:
                await own.close()
            raise
        raw = cls(ws, own)
        opened = await raw.text()
        assert opened.startswith("0{"), opened  # Engine.IO OPEN
        if token is not None:
            connected = await raw.connect(token)
            assert connected.startswith("40{"), connected
        return raw

    async def text(self, timeout: float = 5.0) -> str:
        msg = await self.ws.receive(timeout=timeout)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        data: str = msg.data
        return data

    async def connect(self, token: str) -> str:
        """Send a Socket.IO CONNECT; return the server's answer (``40{...}`` or ``44{...}``)."""
        await self.ws.send_str("40" + json.dumps({"token": token}))
        return await self.text()

    async def send_all(self, frames: list[str | bytes]) -> None:
        """Send each frame, stopping quietly once the server has closed the connection."""
        for frame in frames:
            try:
                if isinstance(frame, bytes):
                    await self.ws.send_bytes(frame)
                else:
                    await self.ws.send_str(frame)
            except ConnectionError:
                return

    async def closed_within(self, timeout: float = 5.0) -> bool:
        """Whether the server ends the connection within ``timeout`` (frames before the end,
        such as Engine.IO's CLOSE packet or the answers to pings, are read and dropped)."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    msg = await self.ws.receive()
                    if msg.type in _WS_ENDED:
                        return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        await self.ws.close()
        if self._own_session is not None:
            await self._own_session.close()
