"""Redis Sentinel (issue 16, item 3): a real master, one replica and three sentinels on loopback
(quorum 2, down after 1 s), each a redis-server process in a folder of its own, started and
stopped by pid here. The master is killed with SIGKILL and the sentinels promote the replica.

- The hand-written clients (``shared.resp.Pipeline``, ``gateway.live.subscriber.Subscriber``)
  and redis-py's (``shared.redis_client``) reach the new master on their next connect.
- Under a steady stream of HTTP submits to a real gateway process, with a real Celery worker,
  both configured with one ``redis+sentinel://`` URL only (the broker is derived from it):
  every accepted (202) task ends COMPLETED after the failover, and every refusal meanwhile is a
  503 with ``Retry-After``, never a 500. The figures are printed (``pytest -s``).
- A Redis Cluster node is refused at start, naming the variable.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis

from gateway.cli.embedded import find_redis_server, free_port, wait_for_port
from gateway.live.subscriber import Subscriber
from gateway.resources import open_records
from shared.errors import ConfigError
from shared.redis_client import async_client
from shared.resp import Pipeline
from shared.settings import Settings
from tests.support import FAULT_ENV, CeleryWorker, GatewayProcess, auth, base_env

pytestmark = pytest.mark.timeout(90)

MASTER_NAME = "tgmaster"


class Node:
    """One redis-server process (a data node or a sentinel), stopped by its pid."""

    def __init__(self, folder: Path, args: list[str], conf: str | None = None) -> None:
        self.folder = folder
        self.port = free_port()
        while self.port > 55535:  # a cluster node also listens on its port + 10000
            self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        argv = [find_redis_server()]
        if conf is not None:  # a sentinel rewrites its config file: it must be its own
            path = folder / "sentinel.conf"
            path.write_text(f"port {self.port}\nbind 127.0.0.1\ndir {folder}\n{conf}")
            argv += [str(path), "--sentinel"]
        else:
            argv += ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(folder)]
            argv += ["--save", "", "--appendonly", "no", *args]
        log = open(folder / "redis.log", "ab")  # noqa: SIM115
        self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        wait_for_port(self.port, 10, self.proc)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class SentinelSet:
    """A master, a replica of it and three sentinels watching it (quorum 2)."""

    def __init__(self, tmp: Path) -> None:
        self.nodes: list[Node] = []
        self.master = self._node(Node(tmp / "master", []))
        self.replica = self._node(
            Node(tmp / "replica", ["--replicaof", "127.0.0.1", str(self.master.port)])
        )
        conf = (
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master.port} 2\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
            f"sentinel failover-timeout {MASTER_NAME} 4000\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
        )
        self.sentinels = [self._node(Node(tmp / f"sentinel{i}", [], conf)) for i in range(3)]

    def _node(self, node: Node) -> Node:
        self.nodes.append(node)
        return node

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{MASTER_NAME}/0"

    def master_port(self) -> int | None:
        """The master's port as the first sentinel that answers names it."""
        for sentinel in self.sentinels:
            if sentinel.proc is None:
                continue
            with contextlib.suppress(redis.RedisError):
                reply = sentinel.client().execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME
                )
                if reply:
                    return int(reply[1])
        return None

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Until the replica is in sync and every sentinel knows the replica and the other
        two sentinels (a failover needs a majority of the sentinels to agree)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.replica.client().info("replication")
            ready = info.get("master_link_status") == "up"
            for sentinel in self.sentinels:
                state = sentinel.client().sentinel_master(MASTER_NAME)
                ready = ready and int(state["num-slaves"]) == 1
                ready = ready and int(state["num-other-sentinels"]) == 2
            if ready:
                return
            time.sleep(0.2)
        raise TimeoutError("the sentinels did not settle")

    def wait_failover(self, timeout: float = 30.0) -> float:
        """Until the sentinels name the replica and it answers as master; the seconds taken."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.master_port() == self.replica.port:
                role = self.replica.client().execute_command("ROLE")
                if role[0] == b"master":
                    return time.monotonic() - start
            time.sleep(0.1)
        raise TimeoutError("no failover")

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    group = SentinelSet(tmp_path)
    try:
        group.wait_ready()
        yield group
    finally:
        group.stop()


async def test_clients_follow_a_failover(sentinels: SentinelSet) -> None:
    """The pipelined client, the subscriber and redis-py's client each reach the new master
    on their next connect after the old one was killed; the sentinels' first answer after the
    kill (the dead master) is a failed connect, not a hang."""
    url = sentinels.url
    pipe = Pipeline(url, timeout=2.0)
    client = async_client(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        assert await pipe.execute("SET", "k", "before") == b"OK"
        assert await client.get("k") == b"before"
        sub = Subscriber(url)
        await sub.connect(2.0)
        await sub.subscribe("chan")
        sub.close()

        sentinels.master.stop(signal.SIGKILL)
        recovered = sentinels.wait_failover()
        failures: Counter[str] = Counter()
        async with asyncio.timeout(20):
            while True:
                try:
                    assert await pipe.execute("SET", "k", "after") == b"OK"
                    break
                except redis.RedisError as exc:  # the dead master until the sentinels agree
                    failures[type(exc).__name__] += 1
                    await asyncio.sleep(0.1)
        assert await client.get("k") == b"after"
        assert await pipe.execute("ROLE") == [b"master", *(await pipe.execute("ROLE"))[1:]]
        sub = Subscriber(url)
        await sub.connect(2.0)
        await sub.subscribe("chan")
        assert await client.publish("chan", "hello") == 1
        replies = await asyncio.wait_for(sub.replies(), 5)
        assert replies[0][:2] == [b"message", b"chan"] and replies[0][2] == b"hello"
        sub.close()
        print(f"sentinel clients: failover took {recovered:.1f}s; errors meanwhile {failures}")
    finally:
        pipe.close()
        await client.aclose()


async def test_a_replica_is_a_failed_connect(sentinels: SentinelSet, tmp_path: Path) -> None:
    """A sentinel URL whose sentinels name a replica (stale address) does not connect there."""
    other = Node(tmp_path / "lonely-sentinel", [], (
        f"sentinel monitor {MASTER_NAME} 127.0.0.1 {sentinels.replica.port} 1\n"
    ))  # fmt: skip
    try:
        url = f"redis+sentinel://127.0.0.1:{other.port}/{MASTER_NAME}/0"
        pipe = Pipeline(url, timeout=2.0)
        with pytest.raises(redis.ConnectionError, match="not the master"):
            await pipe.execute("PING")
        pipe.close()
        sub = Subscriber(url)
        with pytest.raises(redis.ConnectionError, match="not the master"):
            await sub.connect(2.0)
        sub.close()
    finally:
        other.stop()


async def test_a_cluster_node_is_refused_at_start(tmp_path: Path) -> None:
    node = Node(tmp_path / "cluster", ["--cluster-enabled", "yes"])
    try:
        env = base_env(f"redis://127.0.0.1:{node.port}/0", "tgc:")
        with pytest.raises(ConfigError, match=r"TASKGATE_REDIS_URL: .*Redis Cluster"):
            async with open_records(Settings.from_env(env)):
                pass
    finally:
        node.stop()


async def _submit_stream(
    base: str, headers: dict[str, str], stop: asyncio.Event, log: list[dict[str, Any]]
) -> None:
    """One submitter: POST demo.count, note what came back, again, until ``stop``."""
    body = {"task": "demo.count", "input": {"steps": 3, "delay": 0.02}}
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while not stop.is_set():
            entry: dict[str, Any] = {"at": time.monotonic()}
            try:
                async with session.post(f"{base}/api/tasks", json=body, headers=headers) as resp:
                    entry["status"] = resp.status
                    entry["retry_after"] = resp.headers.get("Retry-After")
                    payload = await resp.json(content_type=None)
                    if resp.status == 202:
                        entry["task_id"] = payload["task_id"]
                    else:
                        entry["error"] = payload.get("error", {}).get("code")
            except (aiohttp.ClientError, TimeoutError) as exc:
                entry["status"] = f"no answer: {type(exc).__name__}"
            log.append(entry)
            await asyncio.sleep(0.02)


async def _until(predicate: Callable[[], bool], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.05)


async def _statuses(base: str, headers: dict[str, str], ids: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    async with aiohttp.ClientSession() as session:
        for task_id in ids:
            async with session.get(f"{base}/api/tasks/{task_id}", headers=headers) as resp:
                out[task_id] = (await resp.json())["status"] if resp.status == 200 else "?"
    return out


async def test_every_accepted_task_completes_across_a_failover(
    sentinels: SentinelSet, tmp_path: Path
) -> None:
    env = base_env(sentinels.url, f"tgs-{uuid.uuid4().hex[:8]}:", **FAULT_ENV)
    assert "CELERY_BROKER_URL" not in env  # the broker is derived from TASKGATE_REDIS_URL
    worker = CeleryWorker(env, tmp_path, concurrency=2)
    gateway = GatewayProcess(env, tmp_path)
    await asyncio.gather(asyncio.to_thread(worker.start), asyncio.to_thread(gateway.start))
    headers = auth(f"s-{uuid.uuid4().hex[:6]}")
    log: list[dict[str, Any]] = []
    stop = asyncio.Event()
    try:
        async with asyncio.timeout(15):  # ready: Redis, broker and a worker for each queue
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with aiohttp.ClientSession() as s, s.get(f"{gateway.url}/readyz") as r:
                        if r.status == 200:
                            break
                await asyncio.sleep(0.2)
        submitters = [
            asyncio.create_task(_submit_stream(gateway.url, headers, stop, log)) for _ in range(3)
        ]
        await _until(lambda: sum(e.get("status") == 202 for e in log) >= 30, 15)
        killed_at = time.monotonic()
        sentinels.master.stop(signal.SIGKILL)
        promoted = await asyncio.to_thread(sentinels.wait_failover)
        # The stream goes on until the new master took 30 more submits (25 s at most).
        after = killed_at + promoted
        await _until(lambda: sum(e.get("status") == 202 and e["at"] > after for e in log) >= 30, 25)
        stop.set()
        await asyncio.gather(*submitters)

        accepted = [e["task_id"] for e in log if e.get("status") == 202]
        after_kill = [e for e in log if e["at"] >= killed_at]
        refused = [e for e in after_kill if e.get("status") != 202]
        first_ok = min(e["at"] for e in after_kill if e.get("status") == 202)
        statuses: dict[str, str] = {}
        async with asyncio.timeout(40):
            while True:
                statuses = await _statuses(gateway.url, headers, accepted)
                if all(s == "COMPLETED" for s in statuses.values()):
                    break
                await asyncio.sleep(0.5)
        completed_at = time.monotonic()
        by_status = Counter(str(e["status"]) for e in refused)
        print(
            f"sentinel failover: {len(log)} submits, {len(accepted)} accepted (202), "
            f"{Counter(statuses.values())['COMPLETED']} COMPLETED; after the SIGKILL "
            f"{len(refused)} refused {dict(by_status)}; sentinels promoted the replica in "
            f"{promoted:.1f}s, first 202 after the kill at +{first_ok - killed_at:.1f}s, "
            f"every accepted task COMPLETED at +{completed_at - killed_at:.1f}s"
        )
        assert len(accepted) >= 60
        assert Counter(statuses.values()) == {"COMPLETED": len(accepted)}
        # Every refusal is a 503 with Retry-After: nothing half accepted, never a 500.
        for entry in log:
            if entry.get("status") != 202:
                assert entry["status"] == 503 and entry["retry_after"], entry
    finally:
        stop.set()
        gateway.stop()
        worker.stop()
