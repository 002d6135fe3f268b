"""Priorities with one real worker process: jobs start strictly by priority (1 first), FIFO within a priority."""

from __future__ import annotations

import pytest

from app.runtime.control import cancel, pause, resume
from app.runtime.enqueue import enqueue, enqueue_many
from app.runtime.jobs import fetch_job
from app.runtime.worker import build_worker
from app.tasks import queue_keys
from tests.handlers import runs
from tests.waits import wait_status

pytestmark = pytest.mark.slow
pytest_plugins = ["tests.worker_processes"]  # the `workers` fixture


def test_one_worker_runs_waiting_jobs_by_priority_then_in_order(redis_conn, workers):
    pause(redis_conn, "harvest")
    mix = ["low", "normal", "high", 3, "low", 7, "normal", "high", 5, 1, 10, 3, "normal", 2, "low", 9, "high"]
    numeric = {"high": 1, "normal": 5, "low": 10}
    requests = [
        ("semantics.record", {"tag": f"{n:02d}-p{priority}"}, {"queue": "harvest", "priority": priority})
        for n, priority in enumerate(mix)
    ]
    enqueued = enqueue_many(redis_conn, requests)
    assert all(e.created for e in enqueued)
    ids = [e.id for e in enqueued]
    assert [fetch_job(i, redis_conn).priority for i in ids] == [numeric.get(p, p) for p in mix]

    workers.start("harvest", name="one")
    resume(redis_conn, "harvest")
    for job_id in ids:
        wait_status(redis_conn, job_id, "finished")

    expected = sorted(range(len(mix)), key=lambda n: numeric.get(mix[n], mix[n]))  # stable: FIFO per priority
    started = [entry["tag"] for entry in runs(redis_conn)]
    assert started == [requests[n][1]["tag"] for n in expected]
    # the worker's own record agrees: started_at grows in that order
    stamps = [fetch_job(ids[n], redis_conn).started_at for n in expected]
    assert stamps == sorted(stamps)


def test_notifications_jobs_default_to_the_first_priority(redis_conn, workers):
    pause(redis_conn, "notifications")
    normal = enqueue(
        redis_conn, "semantics.record", {"tag": "normal"}, {"queue": "notifications", "priority": "normal"}
    )
    default = enqueue(redis_conn, "semantics.record", {"tag": "default"}, {"queue": "notifications"})
    assert fetch_job(default.id, redis_conn).priority == 1
    assert redis_conn.lrange(queue_keys("notifications").lane(1), 0, -1) == [default.id.encode()]
    assert fetch_job(normal.id, redis_conn).priority == 5

    workers.start("notifications", name="n-1")
    resume(redis_conn, "notifications")
    wait_status(redis_conn, normal.id, "finished")
    assert [entry["tag"] for entry in runs(redis_conn)] == ["default", "normal"]


def test_an_id_pushed_twice_runs_once(redis_conn):
    """The dequeue script takes only a job whose status is queued: a second copy of its id is dropped."""
    keys = queue_keys("harvest")
    twice = enqueue(redis_conn, "semantics.record", {"tag": "twice"}, {"queue": "harvest", "priority": "high"})
    redis_conn.rpush(keys.lane(1), twice.id)  # the same id again, as a lost reply's retry or a bad tool might
    redis_conn.rpush(keys.lane(5), twice.id)  # and in another lane
    canceled = enqueue(redis_conn, "semantics.record", {"tag": "canceled"}, {"queue": "harvest"})
    assert cancel(redis_conn, canceled.id) == "canceled"
    redis_conn.rpush(keys.lane(5), canceled.id)  # a canceled job's id left behind
    after = enqueue(redis_conn, "semantics.record", {"tag": "after"}, {"queue": "harvest", "priority": "low"})

    build_worker(["harvest"], redis_conn, "guard").work(burst=True)
    assert [entry["tag"] for entry in runs(redis_conn)] == ["twice", "after"]
    assert fetch_job(canceled.id, redis_conn).get_status() == "canceled"
    assert all(redis_conn.llen(lane) == 0 for lane in keys.lanes)
    assert fetch_job(after.id, redis_conn).get_status() == "finished"
