"""Supervision of ``taskgate up``'s children: redis-server and one Celery worker per queue.

A thread of its own watches them (the gateway's event loop runs in the main thread and never
waits on a child). A child that exits is reaped at once (no zombie), what is left of its
process group (a worker's pool processes) is killed, one line says which child ended and how
(exit code or signal), and it is started again after a capped exponential backoff with jitter.
A child that fails ``FAILURE_LIMIT`` times within ``FAILURE_WINDOW_S`` seconds is not restarted
again: the supervisor gives up, says why, and asks ``up`` to stop everything.

Each child runs in its own process group (``start_new_session``), so a stop reaches every
process it forked and nothing is left behind.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("taskgate.up")

POLL_S = 0.1
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
FAILURE_LIMIT = 5
FAILURE_WINDOW_S = 60.0


def backoff_delay(
    failures: int,
    base: float = BACKOFF_BASE_S,
    cap: float = BACKOFF_CAP_S,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before restart number ``failures`` (1-based): ``base * 2**(n-1)``, at
    most ``cap``, of which a random half ("equal jitter"), so children that died together do
    not come back in lockstep."""
    delay = min(cap, base * 2.0 ** max(0, failures - 1))
    return delay / 2 + rand() * delay / 2


def describe_exit(code: int) -> str:
    """``exit code 1``, or ``killed by SIGKILL`` for a negative ``Popen.returncode``."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def stop_group(
    proc: subprocess.Popen[bytes],
    grace: float = 15.0,
    sig: int = signal.SIGTERM,
    *,
    whole_group: bool = True,
) -> None:
    """Stop a child started in its own process group: ``sig`` to the group (or to its leader
    only), up to ``grace`` seconds to exit, then SIGKILL to whatever is left of the group."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        pgid = proc.pid  # the leader is gone; its group id was its pid
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if whole_group:
            os.killpg(pgid, sig)
        else:
            os.kill(proc.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace)
    # Whatever is left of the group (pool processes, a stuck parent) goes now.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


@dataclass(frozen=True)
class ChildSpec:
    """How to start one child; ``ready`` waits until it serves (raises if it does not)."""

    name: str
    argv: list[str]
    env: Mapping[str, str]
    log: Path | None = None
    ready: Callable[[subprocess.Popen[bytes]], None] | None = None


@dataclass
class _Child:
    spec: ChildSpec
    proc: subprocess.Popen[bytes] | None = None
    failures: collections.deque[float] = field(default_factory=collections.deque)
    restart_at: float = 0.0


class Supervisor:
    """Starts children, restarts those that end, gives up on one that keeps failing."""

    def __init__(
        self,
        *,
        poll_s: float = POLL_S,
        failure_limit: int = FAILURE_LIMIT,
        failure_window_s: float = FAILURE_WINDOW_S,
        backoff: Callable[[int], float] = backoff_delay,
    ) -> None:
        self.poll_s = poll_s
        self.failure_limit = failure_limit
        self.failure_window_s = failure_window_s
        self.backoff = backoff
        self._children: list[_Child] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: str | None = None
        self._on_give_up: list[Callable[[], None]] = []

    @property
    def failure(self) -> str | None:
        """Why the supervisor gave up, or ``None``."""
        return self._failure

    def start(self, spec: ChildSpec) -> subprocess.Popen[bytes]:
        """Start a child (at start-up, in the caller's thread); a failure here raises."""
        proc = _launch(spec)
        log.info("started %s (pid %d)", spec.name, proc.pid)
        with self._lock:
            self._children.append(_Child(spec, proc))
        return proc

    def watch(self) -> None:
        """Watch the children from a thread until ``stop`` (or until it gives up)."""
        self._thread = threading.Thread(target=self._run, name="taskgate-supervisor", daemon=True)
        self._thread.start()

    def on_give_up(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from the supervisor's thread) when it gives up; at once if it
        already has."""
        with self._lock:
            if self._failure is None:
                self._on_give_up.append(callback)
                return
        callback()

    def stop(self, grace: float = 15.0) -> None:
        """Stop watching, then stop every child, the last started first."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            for child in reversed(self._children):
                if child.proc is not None:
                    # The leader only: Celery's main process stops its own pool.
                    stop_group(child.proc, grace, whole_group=False)
                    child.proc = None
            self._children.clear()

    def _run(self) -> None:
        while not self._stopping.wait(self.poll_s):
            with self._lock:
                for child in self._children:
                    if self._stopping.is_set() or self._failure is not None:
                        break
                    self._check(child)
            if self._failure is not None:
                break
        with self._lock:
            callbacks, self._on_give_up = self._on_give_up, []
        if self._failure is not None:
            for callback in callbacks:
                callback()

    def _check(self, child: _Child) -> None:
        if child.proc is not None:
            code = child.proc.poll()  # reaps it: no zombie
            if code is None:
                return
            pid = child.proc.pid
            child.proc = None
            # The leader is gone; what it forked (a worker's pool) would run on unwatched.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            self._failed(child, "died", describe_exit(code), pid)
        elif time.monotonic() >= child.restart_at:
            try:
                proc = _launch(child.spec)
            except (OSError, RuntimeError, TimeoutError) as exc:
                self._failed(child, "did not start", str(exc))
                return
            child.proc = proc
            log.warning("restarted %s (pid %d)", child.spec.name, proc.pid)

    def _failed(self, child: _Child, what: str, reason: str, pid: int | None = None) -> None:
        now = time.monotonic()
        child.failures.append(now)
        while now - child.failures[0] > self.failure_window_s:
            child.failures.popleft()
        count = len(child.failures)
        name = child.spec.name
        who = f"{name} (pid {pid})" if pid is not None else name
        window = f"{self.failure_window_s:g}s"
        if count >= self.failure_limit:
            self._failure = f"{name} failed {count} times within {window} (last: {reason})"
            log.critical(
                "%s %s: %s; %d failures within %s: not restarting it, stopping everything",
                who, what, reason, count, window,
            )  # fmt: skip
            return
        delay = self.backoff(count)
        child.restart_at = now + delay
        log.error(
            "%s %s: %s; restarting in %.1fs (failure %d; %d within %s stop everything)",
            who, what, reason, delay, count, self.failure_limit, window,
        )  # fmt: skip


def _launch(spec: ChildSpec) -> subprocess.Popen[bytes]:
    out = open(spec.log, "ab") if spec.log is not None else None  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            spec.argv,
            env=dict(spec.env),
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
        )
    finally:
        if out is not None:
            out.close()
    if spec.ready is not None:
        try:
            spec.ready(proc)
        except BaseException:
            stop_group(proc, 5.0)
            raise
    return proc
