"""The gateway as ``taskgate gateway`` runs it, plus what a big benchmark needs around it.

Same settings, same ``gateway.cli.commands.serve``, same uvloop; in addition the open-file limit is
raised (10,000 sockets) and the loop-lag sampler of ``gateway.process.looplag`` runs (enabled by
``TASKGATE_LOOPLAG_FILE``, dumped on SIGUSR1).
"""

from __future__ import annotations

import asyncio

from bench.harness import raise_fd_limit
from gateway.cli.commands import _install_uvloop, serve
from gateway.process.looplag import start_from_env
from shared.logging import setup_logging
from shared.settings import Settings


async def _main(settings: Settings) -> None:
    sampler = start_from_env()
    try:
        await serve(settings)
    finally:
        if sampler is not None:
            sampler.cancel()


def main() -> None:
    raise_fd_limit()
    settings = Settings.from_env()
    settings.require_secret()
    settings.require_redis()
    setup_logging(settings.log_level)
    _install_uvloop()
    asyncio.run(_main(settings))


if __name__ == "__main__":
    main()
