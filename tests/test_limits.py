"""Queue limits across real worker processes: the `sync` rate limit and the `reports` concurrency cap hold for all
workers together, not per worker."""

from __future__ import annotations

import time

import pytest

from app.runtime.control import pause, resume
from app.runtime.enqueue import enqueue_many
from app.runtime.jobs import fetch_job
from app.runtime.stats import queue_stats
from app.tasks import get_queue_spec, queue_keys
from tests.handlers import runs
from tests.waits import wait_status

pytestmark = pytest.mark.slow
pytest_plugins = ["tests.worker_processes"]  # the `workers` fixture

#: seconds of leeway for comparing start times read from different clocks (worker's and Redis's)
CLOCK_LEEWAY = 0.02


def _most_in_any_window(starts: list[float], length: float) -> int:
    """The most starts that fall within `length` seconds of one another."""
    most, first = 0, 0
    for last, moment in enumerate(starts):
        while moment - starts[first] >= length:
            first += 1
        most = max(most, last - first + 1)
    return most


def test_rate_limit_holds_across_two_worker_processes(redis_conn, workers):
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
        wait_status(redis_conn, job_id, "finished", timeout=20)

    jobs = [fetch_job(job_id, redis_conn) for job_id in ids]
    starts = sorted(job.started_at.timestamp() for job in jobs)
    # a window opens at the first start after the last one closed: the first holds at most max_jobs starts ...
    assert sum(1 for s in starts if s < starts[0] + limit.period - CLOCK_LEEWAY) <= limit.max_jobs
    # ... and any stretch of one period overlaps at most two windows
    assert _most_in_any_window(starts, limit.period - CLOCK_LEEWAY) <= 2 * limit.max_jobs
    # three windows' worth cannot start in less than two periods
    assert starts[-1] - starts[0] >= (count / limit.max_jobs - 1) * limit.period - CLOCK_LEEWAY
    by_worker = {name: sum(1 for job in jobs if job.worker_name.startswith(f"{name}.")) for name in ("s-1", "s-2")}
    assert sum(by_worker.values()) == count and all(by_worker.values()), by_worker


def test_concurrency_cap_holds_across_four_worker_processes(redis_conn, workers):
    cap = get_queue_spec("reports").concurrency
    assert cap == 3
    pause(redis_conn, "reports")
    requests = [("semantics.record", {"tag": f"r{n}", "sleep": 1}, {"queue": "reports"}) for n in range(12)]
    ids = [e.id for e in enqueue_many(redis_conn, requests)]
    names = [f"r-{k}" for k in range(1, 5)]
    for name in names:
        workers.start("reports", name=name, wait=False)
    for name in names:
        workers.wait_registered(name)
    resume(redis_conn, "reports")

    started_key = queue_keys("reports").started
    samples = []
    deadline = time.monotonic() + 30
    while not all(redis_conn.hget(f"rq:job:{i}", "status") == b"finished" for i in ids):
        assert time.monotonic() < deadline, "the reports jobs did not all finish"
        samples.append((redis_conn.zcard(started_key), queue_stats(redis_conn)["queues"]["reports"]["active"]))
        time.sleep(0.05)

    assert max(leases for leases, _ in samples) <= cap
    assert max(active for _, active in samples) == cap  # the cap was reached, never passed
    assert len(runs(redis_conn)) == 12 and len(runs(redis_conn, event="end")) == 12
    # the handlers' own clocks agree: never more than `cap` runs at once
    events = sorted([(e["t"], 1) for e in runs(redis_conn)] + [(e["t"], -1) for e in runs(redis_conn, event="end")])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak <= cap
    assert len({fetch_job(i, redis_conn).worker_name for i in ids}) >= cap  # spread over several processes
