"""Queue limits across real worker processes: the `sync` rate limit and the `reports` concurrency cap hold for all
workers together, not per worker."""

from __future__ import annotations

import pytest

from app.runtime.control import pause, resume
from app.runtime.enqueue import enqueue_many
from app.runtime.jobs import fetch_job
from app.runtime.stats import queue_stats
from app.tasks import get_queue_spec, queue_keys
from tests.fixtures import wait_for
from tests.handlers import open_gate, runs
from tests.waits import stays, wait_status

pytestmark = pytest.mark.slow
pytest_plugins = ["tests.worker_processes"]  # the `workers` fixture

#: seconds of leeway for the limiter's window (PEXPIRE in whole milliseconds)
LEEWAY = 0.005


def test_rate_limit_holds_across_two_worker_processes(redis_conn, workers):
    """Each start is known to lie between the worker's clock read before its dequeue script (`started_at`) and the
    handler's own record: the assertions hold for any start inside those brackets, so only a broken limit fails
    them, not a worker paused by a busy machine between reading its clock and taking the job."""
    limit = get_queue_spec("sync").rate_limit
    count = 3 * limit.max_jobs
    pause(redis_conn, "sync")  # all jobs wait before the first starts: the workers run flat out
    requests = [("semantics.record", {"tag": f"s{n}"}, {"queue": "sync"}) for n in range(count)]
    ids = [e.id for e in enqueue_many(redis_conn, requests)]
    for name in ("s-1", "s-2"):
        workers.start("sync", name=name, wait=False)
    for name in ("s-1", "s-2"):
        workers.wait_registered(name)
    resume(redis_conn, "sync")
    for job_id in ids:
        wait_status(redis_conn, job_id, "finished", timeout=60)

    jobs = [fetch_job(job_id, redis_conn) for job_id in ids]
    recorded = {e["tag"]: e["t"] for e in runs(redis_conn)}
    # (no later than the start, no earlier than it) per job
    brackets = sorted((job.started_at.timestamp(), recorded[f"s{n}"]) for n, job in enumerate(jobs))
    assert all(low <= high + LEEWAY for low, high in brackets)
    first = brackets[0][0]  # the first window opened no earlier than this
    # surely inside the first window: at most max_jobs of them
    assert sum(1 for _, high in brackets if high < first + limit.period - LEEWAY) <= limit.max_jobs
    # no 2 * max_jobs + 1 starts surely inside one period (a stretch of one period overlaps at most two windows)
    k = 2 * limit.max_jobs + 1
    for n in range(len(brackets) - k + 1):
        group = brackets[n : n + k]
        assert max(high for _, high in group) - group[0][0] >= limit.period - LEEWAY
    # three windows' worth cannot start in less than two periods: the last start of the third window comes
    # at least two periods after the first start
    assert max(high for _, high in brackets) - first >= (count / limit.max_jobs - 1) * limit.period - LEEWAY
    by_worker = {name: sum(1 for job in jobs if job.worker_name.startswith(f"{name}.")) for name in ("s-1", "s-2")}
    assert sum(by_worker.values()) == count and all(by_worker.values()), by_worker


def test_concurrency_cap_holds_across_four_worker_processes(redis_conn, workers):
    cap = get_queue_spec("reports").concurrency
    assert cap == 3
    pause(redis_conn, "reports")
    tags = [f"r{n}" for n in range(2 * cap)]
    requests = [("semantics.gated", {"tag": tag, "wait": 120}, {"queue": "reports"}) for tag in tags]
    ids = [e.id for e in enqueue_many(redis_conn, requests)]
    names = [f"r-{k}" for k in range(1, 5)]
    for name in names:
        workers.start("reports", name=name, wait=False)
    for name in names:
        workers.wait_registered(name)
    resume(redis_conn, "reports")

    started_key = queue_keys("reports").started

    def within_cap():
        return redis_conn.zcard(started_key) <= cap

    # the held jobs fill the cap, and a free fourth worker takes nothing more while they run
    wait_for(lambda: len(runs(redis_conn)) == cap, timeout=60, message=f"{cap} jobs to start")
    stays(lambda: within_cap() and len(runs(redis_conn)) == cap, 2)
    assert queue_stats(redis_conn)["queues"]["reports"]["active"] == cap
    first = [e["tag"] for e in runs(redis_conn)]
    # each held job is on a worker process of its own: the cap counts all processes together
    assert len({fetch_job(ids[tags.index(t)], redis_conn).worker_name for t in first}) == cap
    for tag in first:
        open_gate(redis_conn, tag)
    wait_for(lambda: len(runs(redis_conn)) == 2 * cap, timeout=60, message="the other jobs to start")
    stays(within_cap, 1)
    for tag in tags:
        open_gate(redis_conn, tag)
    for job_id in ids:
        wait_status(redis_conn, job_id, "finished", timeout=60)
    assert len(runs(redis_conn, event="end")) == 2 * cap
    # the handlers' own clocks agree: never more than `cap` runs at once
    events = sorted([(e["t"], 1) for e in runs(redis_conn)] + [(e["t"], -1) for e in runs(redis_conn, event="end")])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak == cap
