"""A worker starting its local Ray removes the folders of workers gone, all but the newest
``KEEP_GONE`` (worker/ray_local.py ``prune``): real folders, real processes (a pid of a process
that ended is dead), no Ray needed."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from tests.support import dead_pids
from worker.ray_local import KEEP_GONE, prune, short_ray_dir


def make(root: Path, name: str, age_s: float, supervisor: int | None = None) -> Path:
    entry = root / name
    (entry / "ray" / "session_1" / "logs").mkdir(parents=True)
    (entry / "ray" / "session_1" / "logs" / "raylet.out").write_text("a log\n")
    if supervisor is not None:
        (entry / "head.json").write_text(json.dumps({"pid": supervisor, "port": 1}))
    when = time.time() - age_s
    os.utime(entry, (when, when))
    return entry


def test_the_folders_of_workers_gone_go_but_the_newest_and_those_in_use(tmp_path: Path) -> None:
    root = tmp_path / f"taskgate-ray-{os.getuid()}"
    root.mkdir()
    pids = dead_pids(KEEP_GONE + 3)
    # Workers gone, the newest first: the first KEEP_GONE stay.
    gone = [make(root, str(pid), 100 + i) for i, pid in enumerate(pids[: KEEP_GONE + 2])]
    # The oldest of all, its worker gone but its supervisor still stopping its head: stays.
    stopping = make(root, str(pids[-1]), 10_000, supervisor=os.getpid())
    mine = make(root, str(os.getpid()), 20_000)  # a worker that runs: stays
    other = make(root, "notes", 30_000)  # not a worker's folder: stays
    # The short Ray directory of a removed one goes with it; a kept one's stays.
    shorts = [short_ray_dir(int(gone[0].name)), short_ray_dir(pids[-2])]
    for path in shorts:
        path.mkdir(parents=True, exist_ok=True)
    try:
        removed = prune(root)
        assert sorted(removed) == sorted(gone[KEEP_GONE:]), removed
        assert all(not p.exists() for p in gone[KEEP_GONE:])
        assert all(p.exists() for p in (*gone[:KEEP_GONE], stopping, mine, other))
        assert shorts[0].exists() and not shorts[1].exists()
        # Nothing more to remove: a second prune leaves everything as it is.
        assert prune(root) == []
        assert all(p.exists() for p in (*gone[:KEEP_GONE], stopping, mine, other))
    finally:
        for path in shorts:
            shutil.rmtree(path, ignore_errors=True)


def test_a_root_that_is_not_there_is_nothing_to_prune(tmp_path: Path) -> None:
    assert prune(tmp_path / "absent") == []
