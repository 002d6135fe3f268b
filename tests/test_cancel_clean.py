"""Cancel, clean and empty against real worker processes: waiting and delayed jobs are canceled at once, a running
one is stopped by its worker (which survives); clean removes old ended jobs up to a limit; empty removes what
waits and leaves what runs."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
import redis

from app.runtime.control import cancel, clean, empty, run_now
from app.runtime.enqueue import enqueue, enqueue_many
from app.runtime.jobs import fetch_job
from app.runtime.stats import queue_stats
from app.runtime.worker import build_worker
from app.tasks import queue_keys
from tests.fixtures import wait_for
from tests.handlers import open_gate, runs
from tests.waits import status, stays, wait_status

pytestmark = pytest.mark.slow
pytest_plugins = ["tests.worker_processes"]  # the `workers` fixture

KEYS = queue_keys("harvest")


def _epoch(stamp: bytes) -> float:
    """Seconds since the epoch of one of RQ's UTC time stamps."""
    return datetime.strptime(stamp.decode(), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def _canceled_registry(redis_conn, queue: str = "harvest") -> list[str]:
    return [i.decode() for i in redis_conn.zrange(queue_keys(queue).canceled, 0, -1)]


# -- cancel ---------------------------------------------------------------------------------------------------------


def test_cancel_a_waiting_job_at_once_and_it_never_runs(redis_conn, workers):
    job = enqueue(redis_conn, "semantics.record", {"tag": "waiting"}, {"queue": "harvest"})
    assert cancel(redis_conn, job.id) == "canceled"
    assert status(redis_conn, job.id) == "canceled"
    assert _canceled_registry(redis_conn) == [job.id]
    assert redis_conn.llen(KEYS.queue) == 0
    assert cancel(redis_conn, job.id) == "canceled"  # again: already canceled, nothing changes

    workers.start("harvest", name="burst", burst=True)
    assert workers.wait_exit("burst") == 0
    assert runs(redis_conn) == []
    assert status(redis_conn, job.id) == "canceled"
    assert queue_stats(redis_conn)["queues"]["harvest"]["totals"].get("canceled") == 1


def test_cancel_a_delayed_job_and_it_never_runs(redis_conn, workers):
    workers.start("harvest", name="h-1")
    job = enqueue(redis_conn, "semantics.record", {"tag": "delayed"}, {"queue": "harvest", "delay": 1})
    assert status(redis_conn, job.id) == "scheduled"
    assert cancel(redis_conn, job.id) == "canceled"
    assert redis_conn.zscore(KEYS.scheduled, job.id) is None
    stays(lambda: status(redis_conn, job.id) == "canceled", 1.8)  # past its due time
    assert runs(redis_conn) == []
    assert _canceled_registry(redis_conn) == [job.id]


@pytest.mark.parametrize("queue", ["harvest", "documents"])  # inline, and in a forked work horse
def test_cancel_a_running_job_stops_it_and_the_worker_goes_on(redis_conn, workers, queue):
    worker = workers.start(queue, name="w-1")
    # held far longer than the wait below: only the cancel can end it in time
    job = enqueue(redis_conn, "semantics.gated", {"tag": "late", "wait": 300}, {"queue": queue})
    wait_for(lambda: runs(redis_conn, "late"), timeout=60, message="the handler to start")

    assert cancel(redis_conn, job.id) == "canceling"
    wait_status(redis_conn, job.id, "canceled", timeout=60)
    assert _canceled_registry(redis_conn, queue) == [job.id]
    assert redis_conn.zcard(queue_keys(queue).started) == 0  # its lease is released
    assert workers.alive("w-1")

    after = enqueue(redis_conn, "system.ping", {"echo": "next"}, {"queue": queue})
    wait_status(redis_conn, after.id, "finished", timeout=60)
    assert fetch_job(after.id, redis_conn).return_value() == "next"
    assert fetch_job(after.id, redis_conn).worker_name.endswith(f".{worker.pid}")
    assert status(redis_conn, job.id) == "canceled"  # it never completed after all
    assert runs(redis_conn, "late", event="end") == []
    assert cancel(redis_conn, after.id) == "finished"
    assert queue_stats(redis_conn)["queues"][queue]["totals"].get("canceled") == 1


# -- clean ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("state", "task", "registry"), [
    ("completed", "semantics.record", KEYS.finished),
    ("failed", "semantics.fail", KEYS.failed),
])  # fmt: skip
def test_clean_removes_jobs_older_than_the_grace_up_to_the_limit(redis_conn, workers, state, task, registry):
    workers.start("harvest", name="h-1")
    ended = "finished" if state == "completed" else "failed"

    def run(tags):
        ids = [enqueue(redis_conn, task, {"tag": t}, {"queue": "harvest", "attempts": 1}).id for t in tags]
        for job_id in ids:
            wait_status(redis_conn, job_id, ended)
        return ids

    old = run(["o1", "o2", "o3", "o4"])
    time.sleep(2)  # a gap of 2 s between the last old end and the first new one
    new = run(["n1", "n2"])
    # the cut-off falls half way between the old jobs' ends and the new ones' (`ended_at`, what clean reads), so no
    # slowness of this machine moves a job to the other side of it
    ended_at = {i: _epoch(redis_conn.hget(f"rq:job:{i}", "ended_at")) for i in old + new}
    cut = (max(ended_at[i] for i in old) + min(ended_at[i] for i in new)) / 2
    assert max(ended_at[i] for i in old) + 0.5 < cut < min(ended_at[i] for i in new) - 0.5

    def grace_between() -> float:
        return time.time() - cut

    assert clean(redis_conn, "harvest", state, grace=grace_between(), limit=3) == 3
    left = {i.decode() for i in redis_conn.zrange(registry, 0, -1)}
    assert set(new) < left and len(left & set(old)) == 1
    gone = set(old) - left
    assert all(fetch_job(job_id, redis_conn) is None for job_id in gone)

    assert clean(redis_conn, "harvest", state, grace=grace_between()) == 1
    assert {i.decode() for i in redis_conn.zrange(registry, 0, -1)} == set(new)
    assert all(fetch_job(job_id, redis_conn) is None for job_id in old)
    assert all(status(redis_conn, job_id) == ended for job_id in new)

    assert clean(redis_conn, "harvest", state) == 2
    assert redis_conn.zcard(registry) == 0


# -- empty ----------------------------------------------------------------------------------------------------------


def test_empty_removes_waiting_and_delayed_jobs_and_leaves_the_running_one(redis_conn, workers):
    workers.start("harvest", name="h-1")
    running = enqueue(redis_conn, "semantics.gated", {"tag": "running"}, {"queue": "harvest"})
    wait_status(redis_conn, running.id, "started")
    doomed = [
        enqueue(redis_conn, "semantics.record", {"tag": "w1"}, {"queue": "harvest"}),
        enqueue(redis_conn, "semantics.record", {"tag": "w2"}, {"queue": "harvest", "priority": "high"}),
        enqueue(redis_conn, "semantics.record", {"tag": "w3"}, {"queue": "harvest", "jobId": "unique"}),
        enqueue(redis_conn, "semantics.record", {"tag": "d1"}, {"queue": "harvest", "delay": 60}),
        enqueue(redis_conn, "semantics.record", {"tag": "d2"}, {"queue": "harvest", "delay": 60, "jobId": "later"}),
    ]
    assert queue_stats(redis_conn)["queues"]["harvest"]["waiting"] == 3

    assert empty(redis_conn, "harvest") == 5
    stats = queue_stats(redis_conn)["queues"]["harvest"]
    assert stats["waiting"] == 0 and stats["delayed"] == 0 and stats["active"] == 1
    assert all(fetch_job(job.id, redis_conn) is None for job in doomed)
    assert not redis_conn.exists(KEYS.dedup("unique"), KEYS.dedup("later"))
    assert status(redis_conn, running.id) == "started"

    open_gate(redis_conn, "running")
    wait_status(redis_conn, running.id, "finished")
    assert fetch_job(running.id, redis_conn).return_value() == "opened"
    again = enqueue(redis_conn, "semantics.record", {"tag": "again"}, {"queue": "harvest", "jobId": "unique"})
    assert again.created
    wait_status(redis_conn, again.id, "finished")
    assert [entry["tag"] for entry in runs(redis_conn)] == ["running", "again"]


def test_empty_racing_a_worker_deletes_only_what_the_worker_did_not_take(redis_url, redis_conn):
    total = 3000
    requests = [("semantics.record", {"tag": "race"}, {"queue": "harvest"})] * total
    ids = [enqueued.id for enqueued in enqueue_many(redis_conn, requests)]
    taker = build_worker(["harvest"], redis.Redis.from_url(redis_url), "racer")
    taken: list[str] = []
    stop = threading.Event()

    def take():  # another worker leasing jobs as fast as it can while the queue is emptied
        while not stop.is_set():
            reply = taker._dequeue(taker.connection)
            if reply[0]:
                taken.append(taker._job_from_reply(reply)[0].id)  # as the worker loop does: the next take is new

    thread = threading.Thread(target=take)
    thread.start()
    try:
        removed = empty(redis_conn, "harvest")
    finally:
        stop.set()
        thread.join()
    assert taken and removed and removed + len(taken) == total  # every job either taken or deleted, never both
    assert all(status(redis_conn, job_id) == "started" for job_id in taken)
    deleted = set(ids) - set(taken)
    assert not [job_id for job_id in deleted if redis_conn.exists(f"rq:job:{job_id}")]
    assert sum(redis_conn.llen(lane) for lane in KEYS.lanes) == 0


def test_a_job_canceled_while_running_runs_to_the_end_when_run_again(redis_conn, workers):
    """The cancel request is spent on the run it stopped: run-now (and retry-failed) start a clean run."""
    workers.start("harvest", name="w-1")
    job = enqueue(redis_conn, "semantics.record", {"tag": "again", "sleep": 2}, {"queue": "harvest"})
    wait_for(lambda: runs(redis_conn, "again"), message="the handler to start")
    assert cancel(redis_conn, job.id) == "canceling"
    wait_status(redis_conn, job.id, "canceled", timeout=10)

    assert run_now(redis_conn, job.id) == "requeued"
    assert wait_status(redis_conn, job.id, "finished", "canceled", timeout=30) == "finished"
    assert len(runs(redis_conn, "again", event="end")) == 1


def test_clean_frees_a_dedup_key_only_when_the_cleaned_job_still_holds_it(redis_conn):
    old = enqueue(redis_conn, "semantics.record", {"tag": "old"}, {"queue": "harvest", "jobId": "nightly"})
    build_worker(["harvest"], redis_conn, "clean-dedup").work(burst=True)
    assert status(redis_conn, old.id) == "finished"
    pending = enqueue(redis_conn, "semantics.record", {"tag": "new"}, {"queue": "harvest", "jobId": "nightly"})
    assert pending.created and pending.id != old.id

    assert clean(redis_conn, "harvest", "completed", grace=0) == 1
    assert redis_conn.get(KEYS.dedup("nightly")) == pending.id.encode()
    again = enqueue(redis_conn, "semantics.record", {"tag": "dup"}, {"queue": "harvest", "jobId": "nightly"})
    assert (again.created, again.id) == (False, pending.id)
