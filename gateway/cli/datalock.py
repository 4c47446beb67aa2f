"""One ``taskgate up`` per data folder: an exclusive ``flock`` on ``<data dir>/up.lock``.

A second ``up`` on the same folder would overwrite the running one's secret (its tokens then
fail with "bad signature") and start a second redis-server on the same append-only files. The
lock is taken before anything in the folder is written and held for the life of the process;
the kernel drops it when the process ends, however it ends, so a crash leaves no stale lock.
The file itself only says who holds it (the pid), for the refusal message.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from shared.errors import ConfigError

LOCK_FILE = "up.lock"


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError):
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
        if text.isdigit():
            return f" (pid {text})"
    return ""


@contextlib.contextmanager
def hold_data_dir(data_dir: Path) -> Iterator[Path]:
    """Hold the folder's lock for the ``with`` block, or raise ``ConfigError`` at once if
    another process holds it; a refused call writes nothing in the folder."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_FILE
    # No O_TRUNC: the holder's pid must still be there for the message if the lock is taken.
    # Python opens it non-inheritable, so no child (redis-server, a worker) keeps the lock.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise ConfigError(
                f"TASKGATE_DATA_DIR: {data_dir} is in use by another `taskgate up`"
                f"{_holder(fd)}; stop it first, or give this one another TASKGATE_DATA_DIR"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # closing the only descriptor releases the lock
