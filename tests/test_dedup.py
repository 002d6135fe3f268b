"""Dedup keys (`jobId`) on the real Redis: concurrent enqueues of one key create one job; the key is free again
once that job has ended."""

from __future__ import annotations

import threading

import pytest
import redis

from app.runtime.control import pause, retry_failed
from app.runtime.enqueue import MAX_BACKOFF, enqueue, retry_intervals
from app.runtime.jobs import fetch_job
from app.runtime.worker import build_worker
from app.tasks import queue_keys
from queues import Backoff, BackoffType
from tests.handlers import open_gate, runs
from tests.waits import wait_status

pytestmark = pytest.mark.slow
pytest_plugins = ["tests.worker_processes"]  # the `workers` fixture

THREADS = 8


def _enqueue_concurrently(redis_url: str, dedup: str) -> list:
    """Enqueue the same key from THREADS threads, each with its own client, released together."""
    barrier = threading.Barrier(THREADS)
    results: list = [None] * THREADS

    def one(n: int) -> None:
        client = redis.Redis.from_url(redis_url)
        try:
            barrier.wait(timeout=10)
            options = {"queue": "harvest", "jobId": dedup}
            results[n] = enqueue(client, "semantics.record", {"tag": f"thread-{n}"}, options)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            results[n] = exc
        finally:
            client.close()

    threads = [threading.Thread(target=one, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert not [r for r in results if not hasattr(r, "created")], results
    return results


def test_concurrent_enqueues_of_one_key_create_one_job_until_it_ends(redis_url, redis_conn, workers):
    keys = queue_keys("harvest")
    jobs = _enqueue_concurrently(redis_url, "order-42")
    assert sum(job.created for job in jobs) == 1
    assert len({job.id for job in jobs}) == 1
    first = jobs[0].id
    assert redis_conn.lrange(keys.queue, 0, -1) == [first.encode()]
    assert len(redis_conn.keys("rq:job:*")) == 1
    assert redis_conn.get(keys.dedup("order-42")) == first.encode()
    winner = next(job for job in jobs if job.created)
    assert fetch_job(first, redis_conn).kwargs == winner.kwargs

    workers.start("harvest", name="h-1")
    wait_status(redis_conn, first, "finished")
    assert len(runs(redis_conn)) == 1
    assert not redis_conn.exists(keys.dedup("order-42"))  # freed when the job ended

    again = enqueue(redis_conn, "semantics.record", {"tag": "again"}, {"queue": "harvest", "jobId": "order-42"})
    assert again.created and again.id != first
    wait_status(redis_conn, again.id, "finished")
    assert [entry["tag"] for entry in runs(redis_conn)][1] == "again"


def test_a_running_job_still_holds_its_key(redis_conn, workers):
    workers.start("harvest", name="h-1")
    job = enqueue(redis_conn, "semantics.gated", {"tag": "held"}, {"queue": "harvest", "jobId": "held"})
    wait_status(redis_conn, job.id, "started")
    duplicate = enqueue(redis_conn, "semantics.gated", {"tag": "held"}, {"queue": "harvest", "jobId": "held"})
    assert not duplicate.created and duplicate.id == job.id
    open_gate(redis_conn, "held")
    wait_status(redis_conn, job.id, "finished")
    assert len(runs(redis_conn, "held")) == 1


def test_a_failed_job_put_back_by_retry_failed_holds_its_key_again(redis_conn, workers):
    workers.start("harvest", name="h-1")
    options = {"queue": "harvest", "jobId": "key-f", "attempts": 1}
    job = enqueue(redis_conn, "semantics.fail", {"tag": "f"}, options)
    wait_status(redis_conn, job.id, "failed")
    pause(redis_conn, "harvest")
    assert retry_failed(redis_conn, "harvest", [job.id]) == [job.id]

    duplicate = enqueue(redis_conn, "semantics.fail", {"tag": "f"}, options)
    assert not duplicate.created and duplicate.id == job.id  # the job is pending again under its key


def test_a_dedup_key_outlives_the_longest_delay_and_a_delayed_retry(redis_conn):
    keys = queue_keys("harvest")
    month = 30 * 24 * 3600
    delayed = enqueue(redis_conn, "semantics.record", {"tag": "late"}, {"queue": "harvest", "jobId": "month",
                                                                          "delay": month})  # fmt: skip
    assert redis_conn.ttl(keys.dedup("month")) > month + 3600  # held past its due time, for its wait and run
    again = enqueue(redis_conn, "semantics.record", {"tag": "dup"}, {"queue": "harvest", "jobId": "month"})
    assert (again.created, again.id) == (False, delayed.id)

    later = 20 * 24 * 3600  # the handler asks for a retry in 20 days: the key follows the retry
    job = enqueue(redis_conn, "semantics.retry-later", {"tag": "r", "delay": later},
                  {"queue": "harvest", "jobId": "retry", "attempts": 3})  # fmt: skip
    build_worker(["harvest"], redis_conn, "dedup-retry").work(burst=True)
    assert redis_conn.hget(f"rq:job:{job.id}", "status") == b"scheduled"
    assert redis_conn.ttl(keys.dedup("retry")) > later + 3600
    assert enqueue(redis_conn, "semantics.record", {"tag": "d"}, {"queue": "harvest", "jobId": "retry"}).id == job.id


def test_exponential_backoff_is_capped():
    intervals = retry_intervals(Backoff(BackoffType.EXPONENTIAL, 5), 99)
    assert max(intervals) <= MAX_BACKOFF and intervals[-1] == MAX_BACKOFF
    assert intervals[:3] == sorted(intervals[:3]) and intervals[0] <= 6
    assert max(retry_intervals(Backoff(BackoffType.EXPONENTIAL, 3 * 86400), 5)) == 3 * 86400  # a longer base stays
