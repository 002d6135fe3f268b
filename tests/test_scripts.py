"""The Lua scripts in a Redis that lost them (a restart, SCRIPT FLUSH) or holds only some of them (another process
loaded what it used): loaded again at the first NOSCRIPT, every job run exactly once, none left taken and not run."""

from __future__ import annotations

import pytest

from app.runtime.enqueue import enqueue, enqueue_many
from app.runtime.redis_scripts import SCRIPTS
from app.runtime.worker import build_worker
from app.tasks import queue_keys

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("loaded", [(), ("dequeue",), ("finish",), ("enqueue", "dequeue", "promote")])
def test_a_worker_with_some_scripts_missing_runs_every_job_once(redis_conn, loaded):
    jobs = [enqueue(redis_conn, "system.ping", {"echo": n}, {"queue": "harvest"}) for n in range(4)]
    redis_conn.script_flush()
    for name in loaded:
        redis_conn.script_load(getattr(SCRIPTS, name).source)

    build_worker(["harvest"], redis_conn, "scripts-test").work(burst=True)

    statuses = [redis_conn.hget(f"rq:job:{job.id}", "status") for job in jobs]
    assert statuses == [b"finished"] * 4
    assert redis_conn.zcard(queue_keys("harvest").started) == 0  # no lease left on a job nobody runs
    assert [int(redis_conn.hget(f"rq:job:{job.id}", "last_attempt")) for job in jobs] == [1] * 4


def test_enqueueing_into_a_redis_without_the_scripts_creates_each_job_once(redis_conn):
    redis_conn.script_flush()
    job = enqueue(redis_conn, "system.ping", {}, {"queue": "harvest"}, wait_replicas=1, wait_timeout=0.05)
    assert job.created and job.replicas == 0  # no replica here: WAIT, run again after the enqueue, says so
    redis_conn.script_flush()
    many = enqueue_many(redis_conn, [("system.ping", {"echo": n}, {"queue": "harvest"}) for n in range(5)])
    assert all(outcome.created for outcome in many)
    assert redis_conn.llen(queue_keys("harvest").queue) == 6
