"""Pause and resume with real worker processes: a paused queue starts nothing, enqueueing still works, other queues
of the same worker keep running, and the pause outlives the worker."""

from __future__ import annotations

import pytest

from app.runtime.control import pause, resume
from app.runtime.enqueue import enqueue
from app.runtime.stats import queue_stats
from tests.handlers import runs
from tests.waits import status, stays, wait_status

pytestmark = pytest.mark.slow
pytest_plugins = ["tests.worker_processes"]  # the `workers` fixture


def _probe(redis_conn, queue: str) -> None:
    """Run one job to the end: the worker's loop is up, and now idle, blocked waiting for work."""
    job = enqueue(redis_conn, "system.ping", {"echo": "probe"}, {"queue": queue})
    wait_status(redis_conn, job.id, "finished")


def test_idle_worker_does_not_start_a_job_of_a_paused_queue_until_resumed(redis_conn, workers):
    workers.start("harvest", name="h-1")
    _probe(redis_conn, "harvest")

    pause(redis_conn, "harvest")
    job = enqueue(redis_conn, "semantics.record", {"tag": "held"}, {"queue": "harvest"})
    assert job.created and status(redis_conn, job.id) == "queued"  # enqueueing still works while paused
    stays(lambda: status(redis_conn, job.id) == "queued", 2.0)
    stats = queue_stats(redis_conn)["queues"]["harvest"]
    assert stats["paused"] is True
    assert stats["waiting"] == 1 and stats["active"] == 0
    assert stats["workers"] == 1

    resume(redis_conn, "harvest")
    wait_status(redis_conn, job.id, "finished", timeout=60)
    assert queue_stats(redis_conn)["queues"]["harvest"]["paused"] is False
    assert len(runs(redis_conn, "held")) == 1


def test_pause_survives_a_worker_restart(redis_conn, workers):
    workers.start("harvest", name="h-1")
    _probe(redis_conn, "harvest")
    pause(redis_conn, "harvest")
    job = enqueue(redis_conn, "semantics.record", {"tag": "held"}, {"queue": "harvest"})

    assert workers.stop("h-1") == 0
    workers.start("harvest", name="h-2")
    stays(lambda: status(redis_conn, job.id) == "queued", 1.5)
    assert queue_stats(redis_conn)["queues"]["harvest"]["paused"] is True

    resume(redis_conn, "harvest")
    wait_status(redis_conn, job.id, "finished", timeout=60)
    assert fetch_worker(redis_conn, job.id).startswith("h-2.")


def test_pausing_one_queue_does_not_hold_the_other_queue_of_the_same_worker(redis_conn, workers):
    workers.start("harvest", "embeddings", name="both")
    _probe(redis_conn, "embeddings")

    pause(redis_conn, "harvest")
    held = enqueue(redis_conn, "semantics.record", {"tag": "harvest"}, {"queue": "harvest"})
    for n in range(3):
        job = enqueue(redis_conn, "semantics.record", {"tag": f"embeddings-{n}"}, {"queue": "embeddings"})
        wait_status(redis_conn, job.id, "finished", timeout=60)  # though harvest (served first) is paused
    assert status(redis_conn, held.id) == "queued"
    stats = queue_stats(redis_conn)["queues"]
    assert stats["harvest"]["paused"] and not stats["embeddings"]["paused"]

    resume(redis_conn, "harvest")
    wait_status(redis_conn, held.id, "finished", timeout=60)


def fetch_worker(redis_conn, job_id: str) -> str:
    return redis_conn.hget(f"rq:job:{job_id}", "worker_name").decode()
