"""Leases with real worker processes: the job of a SIGKILLed worker is recovered by a live worker of its queue and
retried (one attempt used), while a healthy job running longer than the lease is never taken back, inline or in a
forked work horse.

The cases run side by side in one test (on three queues) so the suite waits out the lease only once.
"""

from __future__ import annotations

import time

import pytest

from app.control import cancel
from app.enqueue import enqueue
from app.jobs import fetch_job
from app.leases import LEASE
from app.maintenance import RECOVER_INTERVAL
from app.stats import queue_stats
from app.worker import find_rq_worker, requeue_job_of_dead_worker
from queues import queue_keys
from tests.fixtures import wait_for
from tests.handlers import open_gate, runs
from tests.waits import status, wait_status

pytestmark = pytest.mark.slow
pytest_plugins = ["tests.worker_processes"]  # the `workers` fixture

#: seconds the healthy job runs: past its first lease, and past the time a wrongly expired lease would be recovered
LONG_JOB = LEASE + RECOVER_INTERVAL + 3


def test_abandoned_job_is_recovered_and_a_long_healthy_job_is_not(redis_conn, workers):
    planned = {"doomed": "harvest", "e-1": "embeddings", "e-2": "embeddings", "d-1": "documents", "d-2": "documents"}
    for name, queue in planned.items():
        workers.start(queue, name=name, wait=False)
    for name in planned:
        workers.wait_registered(name)

    long_jobs = {
        queue: enqueue(redis_conn, "semantics.record", {"tag": f"long-{queue}", "sleep": LONG_JOB}, {"queue": queue})
        for queue in ("embeddings", "documents")  # inline, and in a forked work horse
    }
    abandoned = enqueue(
        redis_conn, "semantics.slow-first", {"tag": "abandoned", "sleep": 50}, {"queue": "harvest", "attempts": 3}
    )
    wait_status(redis_conn, abandoned.id, "started")
    for job in long_jobs.values():
        wait_status(redis_conn, job.id, "started")
    assert fetch_job(abandoned.id, redis_conn).worker_name.startswith("doomed.")
    wait_for(lambda: runs(redis_conn, "abandoned"), message="the handler to start")  # not only the lease

    workers.kill("doomed")  # SIGKILL mid-job: nothing is recorded, the lease just stops being renewed
    rescuer = workers.start("harvest", name="rescuer")
    assert fetch_job(abandoned.id, redis_conn).get_status(refresh=False) == "started"

    wait_status(redis_conn, abandoned.id, "finished", timeout=LEASE + 3 * RECOVER_INTERVAL + 5)
    first, second = runs(redis_conn, "abandoned")
    assert first["pid"] == workers.procs["doomed"].pid and second["pid"] == rescuer.pid
    assert second["t"] - first["t"] >= LEASE - 1  # not before its lease ran out
    job = fetch_job(abandoned.id, redis_conn)
    assert job.retries_left == 1 and job.attempt == 2  # the lost run counted as an attempt
    assert job.worker_name.startswith("rescuer.")
    assert job.return_value() == 2
    assert queue_stats(redis_conn)["queues"]["harvest"]["totals"].get("abandoned") == 1

    for queue, long_job in long_jobs.items():
        wait_status(redis_conn, long_job.id, "finished", timeout=LONG_JOB + 10)
        tag = f"long-{queue}"
        assert len(runs(redis_conn, tag)) == 1 and len(runs(redis_conn, tag, event="end")) == 1
        job = fetch_job(long_job.id, redis_conn)
        assert job.retries_left == 2 and job.return_value() == tag
        stats = queue_stats(redis_conn)["queues"][queue]
        assert "abandoned" not in stats["totals"] and stats["totals"].get("completed") == 1
    assert all(workers.alive(name) for name in ("e-1", "e-2", "d-1", "d-2"))


def test_a_cancel_sent_to_a_dead_worker_is_not_lost_when_its_job_is_recovered(redis_conn, workers):
    workers.start("harvest", name="doomed")
    job = enqueue(redis_conn, "semantics.slow-first", {"tag": "orphan", "sleep": 50}, {"queue": "harvest"})
    wait_for(lambda: runs(redis_conn, "orphan"), message="the handler to start")
    workers.kill("doomed")

    assert cancel(redis_conn, job.id) == "canceling"
    started = queue_keys("harvest").started
    (member,) = redis_conn.zrange(started, 0, -1)
    redis_conn.zadd(started, {member: time.time() - 1}, xx=True)  # as if LEASE seconds had gone by

    workers.start("harvest", name="rescuer")
    wait_for(lambda: redis_conn.zcard(started) == 0, timeout=3 * RECOVER_INTERVAL, message="the lease to be taken")
    wait_status(redis_conn, job.id, "canceled", "finished", timeout=5)
    assert status(redis_conn, job.id) == "canceled"
    assert len(runs(redis_conn, "orphan")) == 1


def test_taking_back_a_dead_workers_job_never_touches_the_lease_a_live_worker_took(redis_conn, workers):
    workers.start("harvest", name="doomed")
    job = enqueue(redis_conn, "semantics.gated", {"tag": "retaken", "wait": 60}, {"queue": "harvest", "attempts": 3})
    wait_for(lambda: len(runs(redis_conn, "retaken")) == 1, message="the first run to start")
    dead = find_rq_worker(redis_conn, workers.procs["doomed"].pid)
    workers.kill("doomed")

    # its lease runs out (as LEASE seconds after the kill) and a live worker recovers the job and runs it
    started = queue_keys("harvest").started
    (lost,) = redis_conn.zrange(started, 0, -1)
    redis_conn.zadd(started, {lost: time.time() - 1})
    workers.start("harvest", name="rescuer")
    wait_for(lambda: len(runs(redis_conn, "retaken")) == 2, timeout=30, message="the rescuer to run the job")
    (held,) = redis_conn.zrange(started, 0, -1)
    assert held != lost

    # the dead worker is cleaned up late (a stale pid file found by `workers start`, a slow supervisor)
    assert requeue_job_of_dead_worker(redis_conn, dead) is None
    assert redis_conn.zrange(started, 0, -1) == [held]  # the rescuer's lease is still there
    assert status(redis_conn, job.id) == "started"
    open_gate(redis_conn, "retaken")
    wait_status(redis_conn, job.id, "finished")
    assert len(runs(redis_conn, "retaken")) == 2  # never a third copy beside the rescuer's
    assert fetch_job(job.id, redis_conn).retries_left == 1  # the expired lease used one attempt, and only it
