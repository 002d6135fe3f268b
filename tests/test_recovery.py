"""Leases with real worker processes: the job of a SIGKILLed worker is recovered by a live worker of its queue and
retried (one attempt used), while a healthy job running longer than the lease is never taken back, inline or in a
forked work horse.

The cases run side by side in one test (on three queues) so the suite waits out the lease only once.
"""

from __future__ import annotations

import signal
import subprocess
import time

import psycopg
import pytest

from app.runtime.control import cancel
from app.runtime.enqueue import enqueue
from app.runtime.jobs import fetch_job
from app.runtime.leases import LEASE, lease_score
from app.runtime.maintenance import RECOVER_INTERVAL, RENEW_INTERVAL
from app.runtime.stats import queue_stats
from app.runtime.worker import find_rq_worker, requeue_job_of_dead_worker, rq_worker_name
from app.store.migrate import apply_migrations
from app.tasks import queue_keys
from queues import worker_commands_key
from tests.conftest import IN_CI
from tests.fixtures import wait_for
from tests.handlers import open_gate, runs
from tests.waits import status, wait_status
from tests.worker_processes import WorkerProcesses

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
    redis_conn.zadd(started, {member: lease_score(time.time() - 1)}, xx=True)  # as if LEASE seconds had gone by

    workers.start("harvest", name="rescuer")
    wait_for(lambda: redis_conn.zcard(started) == 0, timeout=3 * RECOVER_INTERVAL, message="the lease to be taken")
    wait_status(redis_conn, job.id, "canceled", "finished", timeout=5)
    assert status(redis_conn, job.id) == "canceled"
    assert len(runs(redis_conn, "orphan")) == 1


def _worker_hash(connection, name: str, pid: int) -> dict:
    worker = find_rq_worker(connection, pid)
    assert worker is not None, f"worker {name} is not registered"
    return {k.decode(): v.decode() for k, v in connection.hgetall(worker.key).items()}


@pytest.mark.parametrize("queue", ["harvest", "documents"])  # inline, and in a forked work horse (not stopped)
def test_a_stopped_worker_that_lost_its_lease_stops_its_run_and_records_nothing(redis_conn, workers, queue):
    stale = workers.start(queue, name="stale")
    job = enqueue(redis_conn, "semantics.slow-first", {"tag": "sigstop", "sleep": 120}, {"queue": queue})
    wait_for(lambda: runs(redis_conn, "sigstop"), message="the handler to start")
    stale.send_signal(signal.SIGSTOP)  # frozen (a long GC pause, a stopped container, a VM migration)
    try:
        started = queue_keys(queue).started
        (member,) = redis_conn.zrange(started, 0, -1)
        redis_conn.zadd(started, {member: 1}, xx=True)  # as if LEASE seconds had gone by
        rescuer = workers.start(queue, name="rescuer")
        wait_status(redis_conn, job.id, "finished", timeout=LEASE + 40)
        assert fetch_job(job.id, redis_conn).return_value() == 2  # the rerun
    finally:
        stale.send_signal(signal.SIGCONT)
    # the stale copy learns at its next renewal (due at once) that the job is someone else's, and stops
    wait_for(lambda: _worker_hash(redis_conn, "stale", stale.pid).get("state") == "idle", timeout=RENEW_INTERVAL + 30,
             message="the stale run to stop")  # before: it slept on for the rest of its 120 s
    assert "lost its lease" in workers.log("stale")
    assert runs(redis_conn, "sigstop", event="end") == [runs(redis_conn, "sigstop", event="end")[0]]  # the rerun's
    job = fetch_job(job.id, redis_conn)
    assert job.get_status(refresh=False) == "finished" and job.return_value() == 2
    assert job.worker_name.startswith("rescuer.")
    assert queue_stats(redis_conn)["queues"][queue]["totals"].get("completed") == 1
    assert workers.alive("stale") and workers.alive("rescuer") and rescuer.poll() is None


def test_the_maintenance_thread_survives_what_it_cannot_handle(redis_conn, workers):
    proc = workers.start("harvest", name="h-1")
    before = _worker_hash(redis_conn, "h-1", proc.pid)["last_heartbeat"]
    redis_conn.rpush(worker_commands_key(find_rq_worker(redis_conn, proc.pid).name), b"\xff\xfe cancel")
    wait_for(lambda: _worker_hash(redis_conn, "h-1", proc.pid)["last_heartbeat"] != before,
             timeout=2 * RENEW_INTERVAL + 30, message="a heartbeat after the bad command")
    assert "maintenance failed" in workers.log("h-1")  # said loudly, with its traceback
    job = enqueue(redis_conn, "semantics.record", {"tag": "after-bad-command"}, {"queue": "harvest"})
    wait_status(redis_conn, job.id, "finished")


def test_after_flushall_workers_register_again_and_a_run_in_flight_gets_its_final_row(
    redis_conn, database_url, tmp_path
):
    apply_migrations(database_url)
    logs = tmp_path / "flush-logs"
    logs.mkdir()
    pool = WorkerProcesses(redis_conn, logs, DATABASE_URL=database_url)
    try:
        busy, idle = pool.start("harvest", name="busy"), pool.start("embeddings", name="idle")
        # it sleeps through the flush (a blocked BLPOP would see the flush as an error: another story)
        job = enqueue(redis_conn, "semantics.record", {"tag": "flushed", "sleep": 10}, {"queue": "harvest"})

        def run_rows():
            with psycopg.connect(database_url) as conn:
                return [r[0] for r in conn.execute("SELECT status FROM job_runs WHERE job_id = %s", [job.id])]

        wait_for(lambda: run_rows() == ["started"], timeout=30, message="the run's started row")
        redis_conn.flushall()
        for name, proc in (("busy", busy), ("idle", idle)):  # at their next renewal (before: never)
            wait_for(lambda proc=proc: find_rq_worker(redis_conn, proc.pid) is not None,
                     timeout=RENEW_INTERVAL + 30, message=f"worker {name} to register again")
        stats = queue_stats(redis_conn)
        assert stats["workers"] == 2 and stats["queues"]["harvest"]["workers"] == 1
        wait_for(lambda: run_rows() == ["completed"], timeout=30, message="the run's final row")
        follow = enqueue(redis_conn, "semantics.record", {"tag": "after-flush"}, {"queue": "harvest"})
        wait_status(redis_conn, follow.id, "finished")
    finally:
        pool.close()


CONTAINER = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"]  # pid 1 at every start, same hostname


def test_a_worker_restarted_under_its_previous_name_serves_at_once_and_retries_its_job(redis_conn, workers):
    if subprocess.run([*CONTAINER, "true"], capture_output=True).returncode != 0:
        message = "cannot make a pid namespace here (unshare)"
        if IN_CI:
            pytest.fail(f"{message}; in CI (CI=true) this is a failure, not a skip")
        pytest.skip(f"{message} (skipped outside CI only)")
    name = rq_worker_name("c-1").rsplit(".", 1)[0] + ".1"  # what the worker calls itself as pid 1
    workers.start("harvest", name="c-1", wait=False, wrap=CONTAINER)
    wait_for(lambda: redis_conn.exists(f"rq:worker:{name}"), timeout=20, message="the worker to register")
    job = enqueue(redis_conn, "semantics.slow-first", {"tag": "container", "sleep": 120},
                  {"queue": "harvest", "attempts": 3})
    wait_for(lambda: runs(redis_conn, "container"), message="the handler to start")
    workers.kill("c-1")  # SIGKILL: the whole namespace goes, nothing is unregistered
    assert redis_conn.exists(f"rq:worker:{name}")
    workers.start("harvest", name="c-1", wait=False, wrap=CONTAINER)
    # before: the new process refused to start while the dead entry lived (RQ: 480 s), and the job waited
    wait_status(redis_conn, job.id, "finished", timeout=60)
    assert workers.alive("c-1"), workers.log("c-1")
    assert fetch_job(job.id, redis_conn).return_value() == 2  # retried once, at once: no lease to wait out
    assert len(runs(redis_conn, "container")) == 2
    assert queue_stats(redis_conn)["queues"]["harvest"]["totals"].get("abandoned") == 1
    assert not redis_conn.hexists(f"rq:worker:{name}", "death")


def test_taking_back_a_dead_workers_job_never_touches_the_lease_a_live_worker_took(redis_conn, workers):
    workers.start("harvest", name="doomed")
    job = enqueue(redis_conn, "semantics.gated", {"tag": "retaken", "wait": 60}, {"queue": "harvest", "attempts": 3})
    wait_for(lambda: len(runs(redis_conn, "retaken")) == 1, message="the first run to start")
    dead = find_rq_worker(redis_conn, workers.procs["doomed"].pid)
    workers.kill("doomed")

    # its lease runs out (as LEASE seconds after the kill) and a live worker recovers the job and runs it
    started = queue_keys("harvest").started
    (lost,) = redis_conn.zrange(started, 0, -1)
    redis_conn.zadd(started, {lost: lease_score(time.time() - 1)})
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
