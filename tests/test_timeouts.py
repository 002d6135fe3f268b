"""Timeouts and crashes in real worker processes: a job past its timeout fails with JobTimeoutError and is retried
per policy, inline and in a forked work horse; a work horse that dies is a failed run, and its worker goes on."""

from __future__ import annotations

import pytest

from app.runtime.enqueue import enqueue
from app.runtime.jobs import fetch_job
from app.runtime.stats import queue_stats
from app.tasks import get_queue_spec, queue_keys
from tests.handlers import runs
from tests.waits import wait_status

pytestmark = pytest.mark.slow
pytest_plugins = ["tests.worker_processes"]  # the `workers` fixture

RETRY_AT_ONCE = {"attempts": 2, "backoff": {"type": "fixed", "delay": 0}}


def _error(redis_conn, job_id: str) -> str:
    return (redis_conn.hget(f"rq:job:{job_id}", "exc_info") or b"").decode()


@pytest.mark.parametrize("queue", ["harvest", "documents"])  # inline, and in a forked work horse
def test_a_job_past_its_timeout_fails_with_job_timeout_error_and_is_retried(redis_conn, workers, queue):
    worker = workers.start(queue, name="w-1")
    options = {"queue": queue, "timeout": 1, **RETRY_AT_ONCE}
    job = enqueue(redis_conn, "semantics.record", {"tag": "slow", "sleep": 3}, options)
    wait_status(redis_conn, job.id, "failed", timeout=15)

    assert len(runs(redis_conn, "slow")) == 2  # the first attempt timed out and was retried
    assert runs(redis_conn, "slow", event="end") == []  # neither run went on past its timeout
    assert "JobTimeoutError: job exceeded its timeout of 1 s" in _error(redis_conn, job.id)
    assert redis_conn.zscore(queue_keys(queue).failed, job.id) is not None
    totals = queue_stats(redis_conn)["queues"][queue]["totals"]
    assert totals.get("retried") == 1 and totals.get("failed") == 1

    after = enqueue(redis_conn, "system.ping", {"echo": "next"}, {"queue": queue})
    wait_status(redis_conn, after.id, "finished")
    assert fetch_job(after.id, redis_conn).worker_name.endswith(f".{worker.pid}")


def test_a_fork_worker_survives_a_work_horse_that_exits(redis_conn, workers):
    worker = workers.start("documents", name="d-1")
    job = enqueue(redis_conn, "semantics.exit", {"tag": "crash", "code": 1}, {"queue": "documents", **RETRY_AT_ONCE})
    wait_status(redis_conn, job.id, "failed", timeout=15)

    crashed = runs(redis_conn, "crash")
    assert len(crashed) == 2 and worker.pid not in {entry["pid"] for entry in crashed}  # each in its own child
    assert "work horse died (exit status 1)" in _error(redis_conn, job.id)
    assert workers.alive("d-1")

    after = enqueue(redis_conn, "semantics.record", {"tag": "next"}, {"queue": "documents"})
    wait_status(redis_conn, after.id, "finished")
    assert fetch_job(after.id, redis_conn).worker_name.endswith(f".{worker.pid}")
    totals = queue_stats(redis_conn)["queues"]["documents"]["totals"]
    assert totals.get("retried") == 1 and totals.get("failed") == 1 and totals.get("completed") == 1


def test_a_job_without_a_timeout_of_its_own_gets_its_queues_and_it_is_enforced(redis_conn, workers, monkeypatch):
    import dataclasses

    import queues

    assert fetch_job(enqueue(redis_conn, "system.ping", {}, {"queue": "reports"}).id, redis_conn).timeout == (
        get_queue_spec("reports").timeout
    )  # 5 minutes: too long to wait for here, so harvest's default is made 1 s where the job is enqueued
    monkeypatch.setitem(queues.QUEUES, "harvest", dataclasses.replace(queues.QUEUES["harvest"], timeout=1))
    workers.start("harvest", name="h-1")
    job = enqueue(redis_conn, "semantics.record", {"tag": "too-slow", "sleep": 60}, {"queue": "harvest", "attempts": 1})
    assert fetch_job(job.id, redis_conn).timeout == 1  # no timeout option: the queue's
    wait_status(redis_conn, job.id, "failed", timeout=45)  # long before its 60 s sleep could end

    assert runs(redis_conn, "too-slow", event="end") == []
    assert "JobTimeoutError: job exceeded its timeout of 1 s" in _error(redis_conn, job.id)
