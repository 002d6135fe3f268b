"""Stopping real worker processes: SIGTERM lets the running job finish and takes no other (warm shutdown), inline
and forked; a SIGKILLed fork worker must not leave its work horse running the job on its own."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from app.runtime.enqueue import enqueue
from app.tasks import queue_keys
from tests.fixtures import wait_for
from tests.handlers import open_gate, runs
from tests.waits import status

pytestmark = pytest.mark.slow
pytest_plugins = ["tests.worker_processes"]  # the `workers` fixture


@pytest.mark.parametrize("queue", ["harvest", "documents"])  # inline, and in a forked work horse
def test_sigterm_lets_the_running_job_finish_and_takes_no_other(redis_conn, workers, queue):
    workers.start(queue, name="w-1")
    running = enqueue(redis_conn, "semantics.gated", {"tag": "running", "wait": 120}, {"queue": queue})
    waiting = enqueue(redis_conn, "semantics.record", {"tag": "waiting"}, {"queue": queue})
    wait_for(lambda: runs(redis_conn, "running"), timeout=60, message="the job to reach its gate")

    workers.procs["w-1"].send_signal(signal.SIGTERM)
    wait_for(lambda: "warm shutdown requested" in workers.log("w-1"), timeout=60, message="the worker to see the stop")
    assert status(redis_conn, running.id) == "started"  # the job cannot end before its gate opens
    open_gate(redis_conn, "running")
    assert workers.wait_exit("w-1", timeout=60) == 0
    assert status(redis_conn, running.id) == "finished"
    assert len(runs(redis_conn, "running", event="end")) == 1
    assert status(redis_conn, waiting.id) == "queued"  # no job starts after SIGTERM
    assert redis_conn.lrange(queue_keys(queue).queue, 0, -1) == [waiting.id.encode()]
    assert redis_conn.zcard(queue_keys(queue).started) == 0
    assert runs(redis_conn, "waiting") == []


def _running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie nobody reaped yet is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
    except (OSError, IndexError):
        return False
    return state not in "ZX"


def test_a_sigkilled_fork_worker_leaves_no_work_horse_running(redis_conn, workers):
    workers.start("documents", name="d-1")
    # held far longer than the wait below: only the worker's death can end the work horse in time
    enqueue(redis_conn, "semantics.gated", {"tag": "horse", "wait": 300}, {"queue": "documents"})
    horse = wait_for(lambda: runs(redis_conn, "horse"), timeout=60, message="the work horse to start")[0]["pid"]
    assert horse != workers.procs["d-1"].pid

    workers.kill("d-1")
    try:
        wait_for(lambda: not _running(horse), timeout=60, message="the work horse to end with its worker")
    finally:
        if _running(horse):  # our own grandchild: do not leave it behind
            os.kill(horse, signal.SIGKILL)


def test_sigterm_to_an_idle_worker_as_work_arrives_leaves_no_job_taken_and_unrun(redis_conn, workers):
    """An idle worker's dequeue rides behind its blocking wait: a SIGTERM landing as a job arrives must neither lose
    the job taken meanwhile (leased, never run) nor start it. Each job either ran once before the stop, or waits
    in its lane, unleased, for the next worker."""
    keys = queue_keys("harvest")
    for n in range(12):
        name = f"idle-{n}"
        workers.start("harvest", name=name)
        job = enqueue(redis_conn, "semantics.record", {"tag": name}, {"queue": "harvest", "attempts": 1})
        os.kill(workers.procs[name].pid, signal.SIGTERM)  # as the job arrives (the worker may be taking it)
        assert workers.wait_exit(name, timeout=30) == 0
        ran = runs(redis_conn, name)
        if ran:
            assert len(ran) == 1 and status(redis_conn, job.id) == "finished", n
        else:
            assert status(redis_conn, job.id) == "queued", n
            assert redis_conn.lrange(keys.queue, 0, -1) == [job.id.encode()], n
            redis_conn.delete(keys.queue)
        assert redis_conn.zcard(keys.started) == 0, n  # no lease left for the recovery to count as an attempt
