"""The ``taskgate`` command: ``up``, ``gateway``, ``token``, ``purge``; and the client's
``submit``, ``follow``, ``tasks``, ``cancel``, ``types`` (``client.cli``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from aiohttp import web

from client.cli import add_client_commands
from gateway.auth import TokenRules, issue_token
from gateway.cli.embedded import SECRET_FILE, embedded
from shared import tracing
from shared.errors import ConfigError
from shared.logs import setup as setup_logs
from shared.settings import Secret, Settings

DEMO_USER = "demo"
# `up` stopped because a child kept failing (ConfigError is 2, Ctrl-C 130).
EXIT_GAVE_UP = 1


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def serve(
    settings: Settings,
    banner: str | None = None,
    stop_on: Callable[[Callable[[], None]], None] | None = None,
    *,
    reuse_port: bool = False,
) -> None:
    """Run the gateway until SIGINT or SIGTERM, or until the function handed to ``stop_on``
    is called (from any thread: ``up``'s supervisor calls it when it gives up)."""
    from gateway.app import create_app
    from gateway.process import gctune

    app = create_app(settings)
    # reuse_port: one of several gateway processes on the same port (``--processes``); the
    # kernel spreads the connections over them (SO_REUSEPORT).
    runner = await _listen(app, settings.host, settings.port, "TASKGATE_PORT", reuse_port)
    try:
        metrics_site = await _metrics_site(app, settings)
    except ConfigError:
        await runner.cleanup()
        raise
    gctune.tune()
    if banner:
        print(banner, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if stop_on is not None:

        def stop_soon() -> None:
            with contextlib.suppress(RuntimeError):  # the loop already closed: nothing to stop
                loop.call_soon_threadsafe(stop.set)

        stop_on(stop_soon)
    try:
        await stop.wait()
    finally:
        if metrics_site is not None:
            await metrics_site.cleanup()
        await runner.cleanup()


async def _metrics_site(app: web.Application, settings: Settings) -> web.AppRunner | None:
    """``/metrics`` alone on ``TASKGATE_GATEWAY_METRICS_PORT`` (if set): with ``--processes``
    each process answers there for itself (process n on that port + n - 1), where the shared
    port would hand each scrape to any one of them."""
    port = settings.gateway_metrics_port
    if not port:
        return None
    from gateway.http.metrics import render_metrics

    async def scrape(request: web.Request) -> web.StreamResponse:
        return await render_metrics(app)

    side = web.Application()
    side.router.add_get("/metrics", scrape)
    return await _listen(side, settings.host, port, "TASKGATE_GATEWAY_METRICS_PORT")


async def _listen(
    app: web.Application, host: str, port: int, setting: str, reuse_port: bool = False
) -> web.AppRunner:
    """``app`` served on ``host:port``; a port that cannot be had is a ``ConfigError`` naming
    ``setting``, with nothing left running."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"{setting}: cannot listen on {host}:{port}: {exc.strerror}") from None
    return runner


def cmd_gateway(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    settings.require_secret()
    settings.require_redis()
    setup_logs(settings.log_level, settings.log_format)
    processes = int(getattr(args, "processes", 1) or 1)
    if processes > 1:
        return _gateway_processes(settings, processes)
    tracing.configure("taskgate-gateway")
    _install_uvloop()
    reuse = bool(getattr(args, "reuse_port", False))
    where = f"http://{settings.host}:{settings.port}/"
    banner = f"taskgate gateway on {where}" + (f" (process {os.getpid()})" if reuse else "")
    asyncio.run(serve(settings, banner, reuse_port=reuse))
    return 0


def _gateway_processes(settings: Settings, processes: int) -> int:
    """``processes`` gateways sharing the port (SO_REUSEPORT), each a whole gateway of its own
    (its relay, its sockets; the contract's transport is websocket-only, so a connection
    stays in the process that took it), supervised: one that dies is restarted; Ctrl-C or
    SIGTERM stops them all."""
    from gateway.cli.supervisor import ChildSpec, Supervisor

    argv = [sys.executable, "-m", "gateway.cli.commands", "gateway", "--reuse-port"]
    supervisor = Supervisor()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        for n in range(processes):
            env = dict(os.environ)
            if settings.gateway_metrics_port:
                env["TASKGATE_GATEWAY_METRICS_PORT"] = str(settings.gateway_metrics_port + n)
            supervisor.start(ChildSpec(f"gateway-{n + 1}", argv, env))
        supervisor.watch()
        supervisor.on_give_up(stop.set)
        print(f"taskgate gateway: {processes} processes on "
              f"http://{settings.host}:{settings.port}/", flush=True)  # fmt: skip
        stop.wait()
    finally:
        supervisor.stop()
    if supervisor.failure is not None:
        print(f"taskgate: {supervisor.failure}", file=sys.stderr)
        return EXIT_GAVE_UP
    return 0


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cmd_up(_: argparse.Namespace) -> int:
    # SIGTERM before the loop runs unwinds like Ctrl-C, so the children are still stopped.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    settings = Settings.from_env()
    setup_logs(settings.log_level, settings.log_format)
    data_dir = Path(settings.data_dir)
    # Ctrl-C reaches only this process; the children (own process groups) are stopped in order.
    # A second `up` on this data folder is refused here, before it writes anything there.
    with embedded(dict(os.environ), data_dir) as stack:
        env = stack.env
        settings = Settings.from_env(env)
        secret = settings.require_secret()
        token = issue_token(secret, DEMO_USER, rules=TokenRules.from_settings(settings))
        url = f"http://{settings.host}:{settings.port}/"
        banner = (
            f"taskgate is up: {url}?token={token}\n"
            f"  Redis:       {settings.redis_url}\n"
            f"  demo token:  {token}\n"
            f"  logs:        {data_dir}/ (redis.log, worker-fast.log, worker-heavy.log)\n"
            f"  try:         curl -H 'Authorization: Bearer {token}'"
            " -H 'Content-Type: application/json' "
            f'-d \'{{"task":"demo.count","input":{{"steps":5}}}}\' {url}api/tasks\n'
            "Ctrl-C stops everything."
        )
        os.environ.update({k: env[k] for k in ("TASKGATE_REDIS_URL", "TASKGATE_SECRET")})
        tracing.configure("taskgate-gateway")
        _install_uvloop()
        asyncio.run(serve(settings, banner, stop_on=stack.supervisor.on_give_up))
        failure = stack.supervisor.failure
    if failure is not None:
        print(f"taskgate: {failure}; stopped everything (logs in {data_dir}/)", file=sys.stderr)
        return EXIT_GAVE_UP
    print("taskgate stopped.", flush=True)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    secret = settings.secret
    if secret is None:
        path = Path(settings.data_dir) / SECRET_FILE
        if not path.is_file():
            raise ConfigError(
                "TASKGATE_SECRET: not set, and no running `taskgate up` secret in "
                f"{settings.data_dir}/"
            )
        secret = Secret(path.read_text().strip())
    print(issue_token(secret, args.user, args.ttl, TokenRules.from_settings(settings)))
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    from gateway.cli.purge import purge

    removed, ended = purge(Settings.from_env(), args.queue)
    print(f"purged {removed} messages from {args.queue}; {ended} tasks ended CANCELLED (Purged)")
    return 0


def _processes(raw: str) -> int:
    if not raw.isdigit() or not 1 <= int(raw) <= 64:
        raise argparse.ArgumentTypeError("must be a whole number from 1 to 64")
    return int(raw)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="taskgate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="embedded Redis, one worker per queue and the gateway")
    gw = sub.add_parser(
        "gateway", help="the gateway alone (needs TASKGATE_REDIS_URL, TASKGATE_SECRET)"
    )
    gw.add_argument(
        "--processes",
        type=_processes,
        default=1,
        help="gateway processes sharing the port (SO_REUSEPORT); default 1",
    )
    gw.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    tok = sub.add_parser("token", help="print a token for USER")
    tok.add_argument("user")
    tok.add_argument("--ttl", type=float, default=24 * 3600, help="seconds (default a day)")
    pur = sub.add_parser("purge", help="remove QUEUE's waiting messages; their tasks end CANCELLED")
    pur.add_argument("queue")
    client_handlers = add_client_commands(sub)
    args = parser.parse_args(argv)
    handlers = {"up": cmd_up, "gateway": cmd_gateway, "token": cmd_token, "purge": cmd_purge}
    handlers.update(client_handlers)
    handler = handlers[args.command]
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"taskgate: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
