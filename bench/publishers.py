"""Simulated workers: processes that publish progress updates at a paced rate.

Modes:

- ``lua`` runs the real record TRANSITION script (``shared.records``), pipelined, exactly as a
  worker's ``ctx.progress`` does (P4a, P5): Redis does a worker's whole cost per update.
- ``publish`` is a bare ``PUBLISH`` of an update of the same shape (the floor of P4a).
- ``msg`` (P3, taskgate and the bare subscriber) publishes the real messages: the transition
  script is run once per task beforehand (``capture_templates``) and the message it published on
  the progress channel is kept; each update is then that message with its ``seq`` raised by one,
  the send time patched into ``progress.data.t`` and ``at``, sent as ``PUBLISH`` commands framed
  by hand (RESP) and pipelined over a plain socket from several processes. So a server receives
  the bytes a worker's transition publishes, while Redis does only the relay's part (PUBLISH).
- ``psio`` (P3, python-socketio) publishes, the same way, the message
  ``AsyncRedisManager.emit("task", snapshot, room="user:<owner>")`` publishes (its JSON, with
  the same snapshot text as ``msg``), so all three servers are offered the same load by the
  same code. ``probe`` sends the ``msg`` messages to a channel nobody subscribes to: what the
  publishers can offer.

Every update carries ``progress.data.t``, the wall-clock time it was sent, from which clients
compute lag.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any
from urllib.parse import urlsplit

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
# The pre-encoded modes: updates per write, and replies left unread before the sender waits.
RAW_BATCH = 2048
# Their pacing tick: a process wakes this often to send what is due (each wake costs CPU that
# the servers under test share, so it is longer than ``TICK_S``).
RAW_TICK_S = 0.005
MAX_OUTSTANDING = 50_000
RAW_MODES = ("msg", "psio")
# How many processes publish in the pre-encoded modes (each pipelining on its own socket).
RAW_PROCESSES = 3
PSIO_CHANNEL = "bench-socketio"
# ``probe``: the ``msg`` messages sent where nobody listens, to measure what the publishers
# can offer.
PROBE_CHANNEL = "bench-probe"


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


# --- pre-encoded messages (modes ``msg`` and ``psio``) ----------------------------------------

# The send time that marks where ``progress.data.t`` sits in a captured message.
_MARK_T = 1234567890.5


@dataclass(frozen=True)
class Template:
    """One task's message, cut where the publisher patches it: ``parts[0] seq parts[1] t
    parts[2]`` and, when there are four parts, ``t parts[3]`` (the message's ``at``).
    ``seq`` is the task's seq when the message was captured; ``record`` is its record's key."""

    task_id: str
    owner: str
    record: str
    seq: int
    parts: tuple[bytes, ...]


def _cut(message: bytes) -> tuple[int, bytes, bytes, bytes, bytes]:
    """Cut a captured progress message around its seq, its ``data.t`` and its ``at``."""
    seq_at = message.index(b'"seq":') + len(b'"seq":')
    seq_end = message.index(b",", seq_at)
    mark = orjson.dumps(_MARK_T)
    t_at = message.index(b'"data":{"t":' + mark) + len(b'"data":{"t":')
    at_at = message.rindex(b',"at":') + len(b',"at":')
    if not (seq_at < t_at < at_at) or not message.endswith(b"}"):
        raise ValueError(f"unexpected message shape: {message[:200]!r}")
    return (
        int(message[seq_at:seq_end]),
        message[:seq_at],
        message[seq_end:t_at],
        message[t_at + len(mark) : at_at],
        message[-1:],
    )


def capture_templates(redis_url: str, prefix: str, tasks: list[tuple[str, str]]) -> list[Template]:
    """Run the real TRANSITION script once per task (a progress update, as ``lua`` does) and
    keep the message it published on the progress channel, cut for patching."""
    keys = Keys(prefix)
    client = sync_client(redis_url)
    transition = client.register_script(TRANSITION_LUA)
    pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    pubsub.subscribe(keys.progress_channel)
    progress = {"percent": 50.0, "message": "step", "data": {"t": _MARK_T}}
    with client.pipeline(transaction=False) as pipe:
        for tid, _ in tasks:
            call = transition_call(
                keys, tid, 86400, "progress", percent=50.0, fields={"progress": progress}
            )
            transition(keys=call.keys, args=call.args, client=pipe)
        pipe.execute()
    owners = dict(tasks)
    got: dict[str, Template] = {}
    deadline = time.monotonic() + 30
    while len(got) < len(tasks):
        if time.monotonic() > deadline:
            raise TimeoutError(f"captured {len(got)} of {len(tasks)} progress messages")
        message = pubsub.get_message(timeout=1.0)
        if message is None or message["type"] != "message":
            continue
        data: bytes = message["data"]
        tid = orjson.loads(data)["snapshot"]["task_id"]
        if tid not in owners:
            continue
        seq, *parts = _cut(data)
        got[tid] = Template(tid, owners[tid], keys.task(tid), seq, tuple(parts))
    pubsub.close()
    # Leave no marked time in the records: a snapshot read from them (on connect, on the relay's
    # resync) would carry it and count as a lag of decades.
    with client.pipeline(transaction=False) as pipe:
        for tid, _ in tasks:
            call = transition_call(
                keys,
                tid,
                86400,
                "progress",
                percent=50.0,
                fields={"progress": {"percent": 50.0, "message": "step", "data": {}}},
            )
            transition(keys=call.keys, args=call.args, client=pipe)
        pipe.execute()
    client.close()
    return [got[tid] for tid, _ in tasks]


def psio_templates(templates: list[Template]) -> list[Template]:
    """The same snapshots as the message ``AsyncRedisManager.emit("task", snapshot,
    room="user:<owner>")`` publishes (python-socketio 5: ``json.dumps`` of this dict)."""
    host_id = uuid.uuid4().hex
    out = []
    for tp in templates:
        hole = "\x00snapshot\x00"
        head, tail = (
            json.dumps(
                {
                    "method": "emit",
                    "event": "task",
                    "data": [hole],
                    "binary": False,
                    "namespace": "/",
                    "room": f"user:{tp.owner}",
                    "skip_sid": None,
                    "callback": None,
                    "host_id": host_id,
                }
            )
            .encode()
            .split(json.dumps(hole).encode())
        )
        # The snapshot: the captured message's text from '{"task_id"' to before ',"at":'.
        first, mid, after_t, _ = tp.parts
        snap_at = first.index(b'"snapshot":') + len(b'"snapshot":')
        parts = (head + first[snap_at:], mid, after_t[: -len(b',"at":')] + tail)
        out.append(Template(tp.task_id, tp.owner, tp.record, tp.seq, parts))
    return out


def _resp_publish_head(channel: bytes) -> bytes:
    return b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$" % (len(channel), channel)


class _RawPublisher:
    """PUBLISH commands framed by hand and written to a plain socket; replies (one integer
    line each) are counted as they come, without waiting for each batch's."""

    def __init__(self, redis_url: str, channel: str, templates: list[Template]) -> None:
        parsed = urlsplit(redis_url)
        self.sock = socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 6379))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if parsed.password:
            self._request(b"AUTH", (parsed.password or "").encode())
        self.head = _resp_publish_head(channel.encode())
        self.templates = templates
        self.redis_url = redis_url
        self.seqs = [tp.seq for tp in templates]
        self.cursor = 0
        self.outstanding = 0

    def _request(self, *words: bytes) -> None:
        self.sock.sendall(
            b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)
        )
        self.outstanding += 1
        self.drain(block=True)

    def sync_seqs(self) -> None:
        """Start above the records' seq (``lua`` may have published since the last run)."""
        client = sync_client(self.redis_url)
        with client.pipeline(transaction=False) as pipe:
            for tp in self.templates:
                pipe.hget(tp.record, "seq")
            stored = pipe.execute()
        self.seqs = [max(s, int(v or 0)) for s, v in zip(self.seqs, stored, strict=True)]
        client.close()

    def store_seqs(self) -> None:
        """Leave each record's seq at the last one published, as transitions would."""
        client = sync_client(self.redis_url)
        with client.pipeline(transaction=False) as pipe:
            for tp, seq in zip(self.templates, self.seqs, strict=True):
                pipe.hset(tp.record, "seq", seq)
            pipe.execute()
        client.close()

    def send(self, n: int) -> None:
        t = b"%.6f" % time.time()
        templates, seqs, head = self.templates, self.seqs, self.head
        m = len(templates)
        i = self.cursor
        out: list[bytes] = []
        add = out.append
        for _ in range(n):
            seq = seqs[i] + 1
            seqs[i] = seq
            p = templates[i].parts
            if len(p) == 4:
                msg = b"".join((p[0], b"%d" % seq, p[1], t, p[2], t, p[3]))
            else:
                msg = b"".join((p[0], b"%d" % seq, p[1], t, p[2]))
            add(head)
            add(b"%d\r\n" % len(msg))
            add(msg)
            add(b"\r\n")
            i += 1
            if i == m:
                i = 0
        self.cursor = i
        self.sock.sendall(b"".join(out))
        self.outstanding += n
        self.drain(block=self.outstanding > MAX_OUTSTANDING)

    def drain(self, block: bool) -> None:
        """Count the replies received so far (``block``: until all of them are in)."""
        while self.outstanding:
            try:
                data = self.sock.recv(1 << 16, 0 if block else socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            if not data:
                raise ConnectionError("redis closed the publisher's connection")
            if b"-" in data:
                raise RuntimeError(f"redis refused a PUBLISH: {data[:200]!r}")
            self.outstanding -= data.count(b"\n")

    def close(self) -> None:
        self.sock.close()


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


def _pace(
    rate: float,
    duration: float,
    send_batch: Any,
    cap: int = MAX_BATCH,
    finish: Any = None,
    tick: float = TICK_S,
) -> tuple[int, float]:
    start = time.monotonic()
    sent = 0
    for n in _steps(rate, duration, cap):
        if n == 0:
            time.sleep(tick)
            continue
        send_batch(n)
        sent += n
    if finish is not None:
        finish()
    return sent, time.monotonic() - start


def _run_raw(conn: Connection, redis_url: str, channel: str, templates: list[Template]) -> None:
    pub = _RawPublisher(redis_url, channel, templates)
    conn.send(("ready", None))
    while True:
        cmd, arg = conn.recv()
        if cmd == "run":
            rate, duration = arg
            pub.sync_seqs()
            done = _pace(
                rate, duration, pub.send, RAW_BATCH, lambda: pub.drain(block=True), RAW_TICK_S
            )
            pub.store_seqs()
            conn.send(("done", done))
        elif cmd == "close":
            pub.close()
            conn.send(("closed", None))
            return


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


def _child(conn: Connection, mode: str, redis_url: str, prefix: str, tasks: list[Any]) -> None:
    if mode in (*RAW_MODES, "probe"):
        channel = {"psio": PSIO_CHANNEL, "probe": PROBE_CHANNEL}.get(
            mode, Keys(prefix).progress_channel
        )
        _run_raw(conn, redis_url, channel, tasks)
    else:
        _run_sync(conn, mode, redis_url, prefix, tasks)


class Publishers:
    """``n`` publisher processes sharing a total rate."""

    def __init__(
        self, mode: str, redis_url: str, prefix: str, tasks: list[Any], n: int = 1
    ) -> None:
        """``tasks``: (task id, owner) pairs, or ``Template``s for ``RAW_MODES`` and
        ``probe``; process ``i`` of ``n`` takes every ``n``-th one from the ``i``-th."""
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
