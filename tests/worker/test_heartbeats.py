"""The process's heartbeat thread (worker.heartbeat): one thread beats every run of the process
at its interval; a run that ends stops being beaten, and so does one whose task left RUNNING;
a later run of the same task is not dropped by an earlier one's end. Real Redis."""

from __future__ import annotations

import threading
import time
from typing import Any

from shared.records import SyncRecords
from shared.status import TaskStatus
from tests.support import wait_until
from tests.worker.conftest import running_task
from worker.heartbeat import Heartbeats

INTERVAL = 0.1


def running(records: SyncRecords) -> str:
    return running_task(records, "beats")


def beat_at(records: SyncRecords, task_id: str) -> float:
    return float(records.client.hget(records.keys.task(task_id), "_hb") or 0)


def threads() -> int:
    return sum(t.name == "taskgate-heartbeats" and t.is_alive() for t in threading.enumerate())


def test_one_thread_beats_every_run_and_stops_with_each(records: SyncRecords) -> None:
    beats = Heartbeats()
    before = threads()
    a, b = running(records), running(records)
    with beats.beating(records, a, INTERVAL):
        first_a = beat_at(records, a)
        with beats.beating(records, b, INTERVAL):
            first_b = beat_at(records, b)
            wait_until(lambda: beat_at(records, a) > first_a and beat_at(records, b) > first_b, 5)
            assert threads() == before + 1
        left_b = beat_at(records, b)
        moved_a = beat_at(records, a)
        wait_until(lambda: beat_at(records, a) > moved_a, 5)
        assert beat_at(records, b) == left_b  # b's run ended: no beat since
    still = beat_at(records, a)
    time.sleep(4 * INTERVAL)
    assert beat_at(records, a) == still
    assert threads() == before + 1  # kept for the process's next run


def test_a_task_that_left_running_is_dropped_and_a_later_run_is_kept(
    records: SyncRecords,
) -> None:
    beats = Heartbeats()
    task_id = running(records)
    with beats.beating(records, task_id, INTERVAL):
        records.transition(task_id, "status", status=TaskStatus.RETRYING)
        time.sleep(3 * INTERVAL)  # a beat found it not RUNNING and dropped the run
        with beats._cond:
            assert task_id not in beats._runs
    # A later run of the same task, registered while an earlier one is still listed, is kept
    # when the earlier one ends.
    records.transition(task_id, "status", status=TaskStatus.RUNNING)
    with beats.beating(records, task_id, INTERVAL):
        with beats.beating(records, task_id, INTERVAL):
            pass
        with beats._cond:
            assert task_id not in beats._runs  # the inner (newer) run replaced and removed it
    first = beat_at(records, task_id)
    with beats.beating(records, task_id, INTERVAL):
        wait_until(lambda: beat_at(records, task_id) > first, 5)


def test_a_beat_that_raises_does_not_end_the_processs_thread(records: SyncRecords) -> None:
    """The one thread beats every later run of the process: an unexpected error in one beat
    (here the first beat of a run raises) is logged and the beating goes on."""

    class FailsOnce(SyncRecords):
        failed = False

        def heartbeat(self, task_id: str) -> Any:
            if not self.failed:
                self.failed = True
                raise RuntimeError("boom")
            return super().heartbeat(task_id)

    flaky = FailsOnce(records.client, records.keys, records.retention_s)
    beats = Heartbeats()
    task_id = running(records)
    first = beat_at(records, task_id)
    with beats.beating(flaky, task_id, INTERVAL):
        wait_until(lambda: flaky.failed and beat_at(records, task_id) > first, 5)
    later = running(records)
    start = beat_at(records, later)
    with beats.beating(records, later, INTERVAL):
        wait_until(lambda: beat_at(records, later) > start, 5)
