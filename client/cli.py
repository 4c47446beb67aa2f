"""The ``taskgate`` subcommands that talk to a gateway: ``submit``, ``follow``, ``tasks``,
``cancel``, ``types``.

They read ``TASKGATE_URL`` (default ``http://127.0.0.1:8080``, where ``taskgate up`` listens)
and ``TASKGATE_TOKEN``, or ``--url`` and ``--token``. ``gateway.cli.commands`` adds them to its
parser with ``add_client_commands``.

Exit codes (``submit --follow`` and ``follow``: from the task's terminal status)::

    0    COMPLETED (any other command: done)
    1    the gateway refused for now (429, 503) or could not be reached, or another error
    2    usage: bad arguments or input, refused token, unknown task id (the error's message)
    3    FAILED
    4    CANCELLED
    5    TIMED_OUT
    130  interrupted (Ctrl-C): following stopped, the task goes on
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from client.async_client import AsyncClient
from client.errors import (
    BadRequest,
    Conflict,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    TaskgateError,
    Unauthorized,
)
from client.follow import TERMINAL, Snapshot
from client.retry import RetryPolicy

DEFAULT_URL = "http://127.0.0.1:8080"
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BY_STATUS = {"COMPLETED": 0, "FAILED": 3, "CANCELLED": 4, "TIMED_OUT": 5}
# Errors the user has to fix (exit 2); anything else is 1.
USAGE_ERRORS = (BadRequest, Unauthorized, NotFound, Conflict, PayloadTooLarge, InvalidInput)
# The CLI retries what says "nothing was done, try again" a few times before giving up.
CLI_RETRY = RetryPolicy(attempts=3, base=0.5, cap=10.0, unreachable=False)

Handler = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """A bad argument: printed as one line, exit 2."""


def add_client_commands(sub: Any) -> dict[str, Handler]:
    """Add the client subcommands to ``sub`` (an ``add_subparsers()`` result); the handler of
    each, by name."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help=f"the gateway (default $TASKGATE_URL, else {DEFAULT_URL})")
    common.add_argument("--token", help="the token to act with (default $TASKGATE_TOKEN)")
    jsonl = argparse.ArgumentParser(add_help=False)
    jsonl.add_argument("--json", action="store_true", help="JSON lines for scripts")

    submit = sub.add_parser(
        "submit", parents=[common, jsonl], help="submit a task (and follow it with --follow)"
    )
    submit.add_argument("name", help="the task type, e.g. demo.count (`taskgate types`)")
    submit.add_argument(
        "--input", default="{}", help="the input as JSON, or @FILE to read it from FILE"
    )
    submit.add_argument("--queue")
    submit.add_argument("--priority", type=int, help="0 to 9")
    submit.add_argument("--countdown", type=float, help="start in this many seconds")
    submit.add_argument("--idempotency-key", dest="idempotency_key")
    submit.add_argument(
        "--follow", action="store_true", help="follow it to its end; exit by its status"
    )
    follow = sub.add_parser(
        "follow", parents=[common, jsonl], help="follow tasks live to their end"
    )
    follow.add_argument("task_ids", nargs="+", metavar="ID")
    tasks = sub.add_parser("tasks", parents=[common, jsonl], help="list your tasks, newest first")
    tasks.add_argument("--status", help="only tasks with this status (RUNNING, FAILED, ...)")
    tasks.add_argument("--limit", type=int, default=20)
    cancel = sub.add_parser("cancel", parents=[common], help="ask a task to stop")
    cancel.add_argument("task_id", metavar="ID")
    sub.add_parser("types", parents=[common, jsonl], help="the task types you may submit")
    return {
        "submit": cmd_submit,
        "follow": cmd_follow,
        "tasks": cmd_tasks,
        "cancel": cmd_cancel,
        "types": cmd_types,
    }


# -- Running a command ------------------------------------------------------------------------


def _connection(args: argparse.Namespace) -> tuple[str, str]:
    url = args.url or os.environ.get("TASKGATE_URL") or DEFAULT_URL
    token = args.token or os.environ.get("TASKGATE_TOKEN")
    if not token:
        raise UsageError(
            "no token: set TASKGATE_TOKEN or pass --token (`taskgate token USER` prints one)"
        )
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"TASKGATE_URL: {url!r} is not an http:// or https:// URL")
    return url, token


def describe(exc: TaskgateError) -> str:
    """One line for an error: the contract's code and message, and the field at fault."""
    line = f"{exc.code}: {exc.message}"
    if isinstance(exc, InvalidInput) and exc.field:
        line += f" (field {exc.field})"
    retry_after = getattr(exc, "retry_after", None)
    if retry_after:
        line += f" (retry in {retry_after:g}s)"
    return line


def _fail(message: str) -> None:
    print(f"taskgate: {message}", file=sys.stderr, flush=True)


class _Interrupted(Exception):
    """Ctrl-C (SIGINT) while a command ran: its work was cancelled."""


async def _interruptible(body: Callable[[], Any]) -> int:
    """``body()``, cancelled by SIGINT, which then raises ``_Interrupted``."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    interrupted = False

    def on_sigint() -> None:
        nonlocal interrupted
        interrupted = True
        if task is not None:
            task.cancel()

    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        code: int = await body()
        return code
    except asyncio.CancelledError:
        if interrupted:
            raise _Interrupted from None
        raise
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGINT)


def _run(args: argparse.Namespace, body: Callable[[AsyncClient], Any]) -> int:
    following: list[str] = []
    args.following = following
    try:
        url, token = _connection(args)

        async def main() -> int:
            async with AsyncClient(url, token, retry=CLI_RETRY) as client:
                code: int = await body(client)
                return code

        return asyncio.run(_interruptible(main))
    except UsageError as exc:
        _fail(str(exc))
        return EXIT_USAGE
    except TaskgateError as exc:
        _fail(describe(exc))
        return EXIT_USAGE if isinstance(exc, USAGE_ERRORS) else EXIT_ERROR
    except (KeyboardInterrupt, _Interrupted):
        if following:
            for task_id in following:
                _fail(f"stopped following; the task goes on: `taskgate cancel {task_id}` stops it")
        else:
            _fail("interrupted")
        return EXIT_INTERRUPTED


def _print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data).decode() + "\n")
    sys.stdout.flush()


def _read_input(raw: str) -> dict[str, Any]:
    source = "--input"
    if raw.startswith("@"):
        path = Path(raw[1:])
        try:
            raw = path.read_text()
        except OSError as exc:
            raise UsageError(f"--input: cannot read {path}: {exc.strerror}") from None
        source = str(path)
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"{source} is not JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{source} must be a JSON object, like '{{\"steps\": 20}}'")
    return value


# -- Following ---------------------------------------------------------------------------------


async def follow_tasks(
    streams: Sequence[tuple[str, AsyncIterator[Snapshot]]],
    as_json: bool,
    following: list[str],
) -> int:
    """Follow each ``(name, snapshots)`` to its end: a bar each (or JSON lines), then each
    outcome. The exit code is that of the first task, in order, that did not complete.
    ``following`` holds the ids of the tasks not ended yet (for the Ctrl-C hint)."""
    from rich.console import Console

    from client.view import ProgressView, outcome

    finals: dict[int, Mapping[str, Any]] = {}

    async def one(key: int, stream: AsyncIterator[Snapshot], show: Callable[..., None]) -> None:
        async for snap in stream:
            task_id = str(snap.get("task_id"))
            if task_id not in following and key not in finals:
                following.append(task_id)
            show(key, snap)
            if snap.get("status") in TERMINAL:
                finals[key] = snap
                following.remove(task_id)

    if as_json:
        await asyncio.gather(
            *(one(k, stream, lambda _, s: _print_json(s)) for k, (_, stream) in enumerate(streams))
        )
    else:
        console = Console(highlight=False)
        with ProgressView(console) as view:
            for key, (name, _) in enumerate(streams):
                view.add(key, name)
            await asyncio.gather(
                *(one(k, stream, view.update) for k, (_, stream) in enumerate(streams))
            )
        for key in range(len(streams)):
            console.print(outcome(finals[key]), soft_wrap=True)
    for key in range(len(streams)):
        code = EXIT_BY_STATUS.get(str(finals[key].get("status")), EXIT_ERROR)
        if code:
            return code
    return EXIT_OK


# -- The commands -------------------------------------------------------------------------------


def cmd_submit(args: argparse.Namespace) -> int:
    try:
        input_ = _read_input(args.input)
    except UsageError as exc:
        _fail(str(exc))
        return EXIT_USAGE

    async def body(client: AsyncClient) -> int:
        options = {
            "queue": args.queue, "priority": args.priority, "countdown": args.countdown,
            "idempotency_key": args.idempotency_key,
        }  # fmt: skip
        if args.follow:
            stream = client.submit_and_follow(args.name, input_, **options)
            return await follow_tasks([(args.name, stream)], args.json, args.following)
        snap = await client.submit(args.name, input_, **options)
        if args.json:
            _print_json(snap)
        else:
            print(snap["task_id"], flush=True)
        return EXIT_OK

    return _run(args, body)


def cmd_follow(args: argparse.Namespace) -> int:
    async def body(client: AsyncClient) -> int:
        firsts = [await client.get(task_id) for task_id in args.task_ids]  # NotFound: exit 2
        streams = [(str(s.get("task", "")), client.follow(s["task_id"])) for s in firsts]
        return await follow_tasks(streams, args.json, args.following)

    return _run(args, body)


def cmd_tasks(args: argparse.Namespace) -> int:
    async def body(client: AsyncClient) -> int:
        snaps = await client.list(args.status, args.limit)
        for snap in snaps:
            if args.json:
                _print_json(snap)
                continue
            progress = snap.get("progress") or {}
            print(
                f"{snap['task_id']}  {snap.get('task', ''):<14} {snap.get('status', ''):<10}"
                f" {float(progress.get('percent') or 0):5.1f}%  {progress.get('message') or ''}"
            )
        return EXIT_OK

    return _run(args, body)


def cmd_cancel(args: argparse.Namespace) -> int:
    async def body(client: AsyncClient) -> int:
        snap = await client.cancel(args.task_id)
        status = snap.get("status")
        if status in TERMINAL and status != "CANCELLED":
            print(f"{args.task_id} had already ended {status}", flush=True)
        else:
            print(f"cancel asked: {args.task_id} ({status})", flush=True)
        return EXIT_OK

    return _run(args, body)


def cmd_types(args: argparse.Namespace) -> int:
    async def body(client: AsyncClient) -> int:
        for kind in await client.task_types():
            if args.json:
                _print_json(kind)
            else:
                queues = ",".join(kind.get("queues") or [kind.get("queue", "")])
                print(f"{kind['name']:<16} {queues:<12} {kind.get('description') or ''}")
        return EXIT_OK

    return _run(args, body)
