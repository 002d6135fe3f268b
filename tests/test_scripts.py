"""The Lua scripts in a Redis that lost them (a restart, SCRIPT FLUSH) or holds only some of them (another process
loaded what it used): loaded again at the first NOSCRIPT, every job run exactly once, none left taken and not run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

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


def test_the_dequeue_writes_rq_dates_from_redis_clock_right_on_every_day(redis_conn):
    """A dequeue sent behind a blocking pop stamps `started_at` from Redis' clock, formatted in Lua as RQ formats
    dates: checked against Python on month ends, leap days and centuries from 1970 to 2400."""
    source = SCRIPTS.dequeue.source
    function = source[source.index("local function rq_time") : source.index("\nend", source.index("local function"))]
    probe = function + (
        "\nend\nlocal out = {}\nfor i = 1, #ARGV, 2 do out[#out + 1] = rq_time({ARGV[i], ARGV[i + 1]}) end\nreturn out"
    )
    moments = [datetime(1970, 1, 1, tzinfo=UTC), datetime(2000, 2, 29, 23, 59, 59, 999999, tzinfo=UTC),
               datetime(2100, 3, 1, tzinfo=UTC), datetime(2400, 12, 31, 12, 30, 5, 1, tzinfo=UTC)]  # fmt: skip
    day = datetime(2023, 12, 25, 7, 8, 9, 123456, tzinfo=UTC)
    moments += [day + timedelta(days=n, seconds=n * 3607) for n in range(0, 1500, 7)]
    args = [part for moment in moments for part in (int(moment.timestamp()), moment.microsecond)]
    assert [s.decode() for s in redis_conn.eval(probe, 0, *args)] == [
        moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ") for moment in moments
    ]
