"""``engine="ray"``: the Celery worker that took a task hands its body to a Ray cluster and
waits for it, as the task's driver.

The cluster is ``TASKGATE_RAY_ADDRESS``: ``auto`` (a Ray node on this machine, ``ray start``),
``HOST:PORT`` of a head's GCS, or ``ray://HOST:PORT`` (Ray Client); unset, a local Ray shared by
all pool processes of this worker, started on first use (``worker.ray_local``, for
development). Each pool process connects once, on its first Ray task; ``ray`` is imported only
then, so the gateway and a worker without Ray tasks never load it.

What the runner (worker/runner.py) sees is the same as for a body run in process:

- progress: every update the Ray side yields (``worker.ray_side``) goes through this run's own
  ``ctx.progress``, so seq, the monotonic percent, coalescing and the cancel check are the
  runner's. The driver takes them from the hub with a bounded wait: a hub that does not answer
  is no update (cancel and time limits are still honoured), and one silent for
  ``HUB_LOST_S`` is replaced for the next run;
- cancel: ``ctx.progress`` or a poll of ``ctx.cancelled`` raises ``TaskCancelled``; the Ray
  work is cancelled (``ray.cancel``, which the body sees as its own ``ctx.progress`` raising),
  forced after ``TASKGATE_RAY_CANCEL_GRACE_S``, and the task ends CANCELLED;
- time limits: Celery's ``SoftTimeLimitExceeded`` arrives here, in the waiting loop; the Ray
  work is cancelled the same way and the runner records TIMED_OUT. The hard limit kills this
  process, and Ray ends the tasks of a driver that died (their owner);
- a Ray worker or node that died (``RAY_LOST``) is ``RetryRequested`` with ``RayWorkerLost``,
  so the task's retry policy decides (without one it ends FAILED with that error); so is a
  cluster this process could not connect to in ``CONNECT_ATTEMPTS`` tries (``RayUnavailable``);
- the function's own error is raised here as itself (``retry_for`` and error types work), and
  its result returns as the body's result (the runner stores it, size limit included).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from types import ModuleType
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from shared.errors import RetryRequested, TaskCancelled
from shared.settings import Settings
from shared.taskspec import TaskSpec
from worker.context import Context

log = logging.getLogger("taskgate.worker")

ADDRESS_ENV = "TASKGATE_RAY_ADDRESS"
GRACE_ENV = "TASKGATE_RAY_CANCEL_GRACE_S"
DEFAULT_GRACE_S = 2.0
# How long the driver waits for the next update before it looks at the cancel flag again.
POLL_S = 0.1
# How long one poll waits for the hub's answer (unanswered: no update this poll), and after how
# long without an answer the hub counts as lost (the next run makes a new one).
HUB_TIMEOUT_S = 1.0
HUB_LOST_S = 30.0
# Connecting: tries, and the pause before each next one (a head restarting, or Ray Client's
# proxy losing the server it started for this client, passes).
CONNECT_ATTEMPTS = 3
CONNECT_PAUSE_S = 1.0
# How long the check that the address answers at all waits for a TCP connection.
CONNECT_CHECK_S = 3.0

_connect_lock = threading.Lock()
_connected: str | None = None


class RayWorkerLost(Exception):
    """The Ray worker process (or node) running the task's body died; the task's retry
    policy decides whether it runs again."""


class RayNotInstalled(RuntimeError):
    """A Ray-engine task reached a worker without the ``ray`` extra."""


class RayUnavailable(Exception):
    """The Ray cluster could not be reached (after ``CONNECT_ATTEMPTS`` tries); the task's
    retry policy decides whether it runs again."""


def cluster_address() -> str:
    """The address this process connects to (``TASKGATE_RAY_ADDRESS``, else the local Ray)."""
    address = os.environ.get(ADDRESS_ENV, "").strip()
    if address:
        return address
    from worker import ray_local

    return ray_local.shared_address()


def connect() -> ModuleType:
    """``ray``, connected to the cluster (once per process)."""
    global _connected
    with _connect_lock:
        if _connected is None:
            if importlib.util.find_spec("ray") is None:
                raise RayNotInstalled(
                    "this task runs on Ray (engine='ray') but ray is not installed in this "
                    "worker: pip install 'taskgate[ray]'"
                )
            address = cluster_address()
            import ray

            if not ray.is_initialized():
                _init(ray, address)
            _connected = address
            log.info("connected to Ray at %s", address)
        import ray

        return ray


def _answers(address: str) -> None:
    """A ``ConnectionError`` at once if nothing accepts a connection at ``address``
    (``HOST:PORT`` or ``ray://HOST:PORT``; ``auto`` is Ray's to find): ``ray.init`` itself waits
    minutes for a GCS that is not there, and 30 s for a Ray Client server."""
    where = address.removeprefix("ray://")
    host, sep, port = where.rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), CONNECT_CHECK_S).close()
    except OSError as exc:
        raise ConnectionError(f"nothing answers at {where}: {exc}") from exc


def _init(ray: ModuleType, address: str) -> None:
    """``ray.init`` to ``address``, tried ``CONNECT_ATTEMPTS`` times on a connection error
    (``ray.init`` undoes a failed one), else ``RayUnavailable``."""
    for attempt in range(1, CONNECT_ATTEMPTS + 1):
        # Celery's pool replaced sys.stderr with a logging proxy that has no file descriptor;
        # ray.init enables faulthandler on it. The real one, meanwhile.
        proxy, sys.stderr = sys.stderr, sys.__stderr__ or sys.stderr
        # ray.init also sets its own SIGTERM handler (sys.exit): the pool process keeps
        # Celery's (a warm shutdown lets the running task finish).
        on_term = signal.getsignal(signal.SIGTERM)
        try:
            _answers(address)
            ray.init(
                address=address,
                namespace="taskgate",
                logging_level=logging.WARNING,
                log_to_driver=False,
                configure_logging=False,
            )
            return
        except (ConnectionError, TimeoutError) as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            if attempt == CONNECT_ATTEMPTS:
                raise RayUnavailable(
                    f"could not connect to the Ray cluster at {address} "
                    f"({attempt} tries; {type(exc).__name__}: {first})"
                ) from exc
            log.warning(
                "connecting to Ray at %s failed (try %d of %d): %s: %s",
                address,
                attempt,
                CONNECT_ATTEMPTS,
                type(exc).__name__,
                first,
            )
        finally:
            sys.stderr = proxy
            if on_term is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, on_term)
        time.sleep(CONNECT_PAUSE_S * attempt)


def lost_errors(ray: ModuleType) -> tuple[type[BaseException], ...]:
    """Ray's errors for a worker, node or object lost to a failure (not the task's doing)."""
    ex = ray.exceptions
    names = (
        "WorkerCrashedError",
        "NodeDiedError",
        "LocalRayletDiedError",
        "ObjectLostError",
        "OutOfMemoryError",
        "RaySystemError",
        "ActorDiedError",
    )
    return tuple(getattr(ex, n) for n in names if isinstance(getattr(ex, n, None), type))


def _task_modules() -> list[str]:
    """The modules the Ray side imports to find the task (``TASKGATE_TASK_MODULES``, as here)."""
    return list(Settings.from_env().task_modules)


def _grace() -> float:
    try:
        return max(0.0, float(os.environ.get(GRACE_ENV, DEFAULT_GRACE_S)))
    except ValueError:
        return DEFAULT_GRACE_S


def stop(ray: ModuleType, ref: Any, grace: float) -> None:
    """Cancel the Ray work of ``ref`` (its parts too): asked first, forced after ``grace``."""
    try:
        ray.cancel(ref, force=False, recursive=True)
    except Exception as exc:  # already ended, or the cluster is gone
        log.debug("ray.cancel: %s", exc)
    ready: list[Any] = []
    try:
        ready, _ = ray.wait([ref], timeout=grace)
    finally:
        # Forced also when the wait itself was cut short (a soft time limit during it).
        if not ready:
            try:
                ray.cancel(ref, force=True, recursive=True)
            except Exception as exc:
                log.debug("ray.cancel(force=True): %s", exc)


_hub: Any = None


def progress_hub(ray: ModuleType) -> Any:
    """This process's ``ProgressHub`` actor (``worker.ray_side``), made on first use."""
    global _hub
    if _hub is None:
        from worker import ray_side

        _hub = ray_side.hub_actor.remote()
    return _hub


def _drop_hub(hub: Any) -> None:
    """``hub`` is dead or lost: the next run makes a new one. The runs that have it keep it
    until they end; the actor goes (Ray's reference counting) once no handle is left."""
    global _hub
    if _hub is hub:
        _hub = None


class _HubPoll:
    """The driver's polls of the hub for one run, at most one in flight. A new poll waits up to
    ``HUB_TIMEOUT_S`` for the answer, one still unanswered is only looked at; no answer is no
    update this time. No answer for ``HUB_LOST_S``: the hub is lost (``_drop_hub``) and this run
    goes on without its progress (cancel and time limits do not need the hub)."""

    def __init__(self, ray: ModuleType, hub: Any, run: str) -> None:
        self._ray = ray
        self._hub = hub
        self._run = run
        self._asked: Any = None
        self._answered = time.monotonic()
        self.lost = False

    def take(self) -> Any:
        wait = 0.0
        if self._asked is None:
            self._asked = self._hub.take.remote(self._run)
            wait = HUB_TIMEOUT_S
        try:
            update = self._ray.get(self._asked, timeout=wait)
        except self._ray.exceptions.GetTimeoutError:
            silent = time.monotonic() - self._answered
            if not self.lost and silent > HUB_LOST_S:
                self.lost = True
                log.warning(
                    "the Ray progress hub has not answered for %.0f s: a new one for the next "
                    "run; run %s goes on without progress updates",
                    silent,
                    self._run,
                )
                _drop_hub(self._hub)
            return None
        self._asked = None
        self._answered = time.monotonic()
        return update


def invoke_ray(spec: TaskSpec, ctx: Context, data: dict[str, Any]) -> Any:
    """Run ``spec``'s body on Ray as ``ctx``'s run; its result (or its error, raised here)."""
    try:
        ray = connect()
    except RayUnavailable as exc:
        raise RetryRequested(None, exc) from exc
    from worker import ray_side

    lost = lost_errors(ray)
    hub = progress_hub(ray)
    run = f"{ctx.task_id}:{ctx.attempt}:{uuid.uuid4().hex[:8]}"
    info = {
        "task_id": ctx.task_id,
        "run": run,
        "attempt": ctx.attempt,
        "owner": ctx.owner,
        "parent_result": ctx.parent_result,
    }
    options = dict(spec.ray_options)
    remote = ray_side.body_remote.options(**options, name=spec.name)
    ref = remote.remote(spec.name, _task_modules(), data, info, hub, options)
    poll = _HubPoll(ray, hub, run)
    ended = False
    try:
        while True:
            ready, _ = ray.wait([ref], timeout=POLL_S)
            update = poll.take()
            if update is not None:
                ctx.progress(update[0], update[1], **update[2])
            if ready:
                ended = True
                return ray.get(ref)
            ctx.raise_if_cancelled()
    except ray.exceptions.RayTaskError as exc:
        ended = True
        cause = exc.cause
        if isinstance(cause, lost):
            if isinstance(cause, ray.exceptions.ActorDiedError):
                _drop_hub(hub)  # the body met the dead hub: a new one for the next run
            raise _lost(spec, cause) from exc
        if isinstance(cause, BaseException):
            raise cause from None
        raise
    except SystemError as exc:
        # A signal handler that raised while Ray's C code waited (Celery's soft time limit,
        # SIGUSR1) comes out as a SystemError with that exception as its context.
        inner = exc.__context__
        if isinstance(inner, SoftTimeLimitExceeded | KeyboardInterrupt | SystemExit):
            raise inner from None
        raise
    except lost as exc:
        if isinstance(exc, ray.exceptions.ActorDiedError):
            _drop_hub(hub)  # the hub's own process died: a new one for the next run
        raise _lost(spec, exc) from exc
    finally:
        if not ended:
            # Cancelled, timed out, or this side failed: the Ray work must not go on.
            with contextlib.suppress(Exception):
                hub.cancel.remote(run)
            stop(ray, ref, _grace())
        with contextlib.suppress(Exception):
            hub.forget.remote(run)


def _lost(spec: TaskSpec, exc: BaseException) -> RetryRequested:
    """A Ray system failure as a retry request (the task's policy decides)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    error = RayWorkerLost(
        f"the Ray worker running task {spec.name} died ({type(exc).__name__}"
        + (f": {first[:300]}" if first else "")
        + ")"
    )
    return RetryRequested(None, error)


__all__ = ["RayUnavailable", "RayWorkerLost", "TaskCancelled", "connect", "invoke_ray"]
