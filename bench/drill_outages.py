"""Drills g, h and i: faults longer and stranger than a restart.

    g  Redis down for a minute (stopped, then started on its port from its append-only file) under load, with
       workers, a scheduler and the web app running, and runs ending while it is away: no acknowledged job lost,
       no finished job run again, no false failure
    h  FLUSHALL under load: every worker is visible again within 10 s, the schedule keeps firing once per slot,
       jobs submitted after it each complete once, and no history row is left `started`
    i  a worker that restarts under its previous name (in a pid namespace: pid 1 and the same hostname at every
       start, as in a container) SIGKILLed mid-job: it serves again within 5 s and its job is retried once
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from redis import Redis

from app.local.servers import free_port
from app.runtime.enqueue import enqueue
from app.runtime.stats import queue_stats
from app.runtime.worker import find_rq_worker
from bench.drill_kit import (
    ATTEMPTS,
    POLL,
    REGISTER_TIMEOUT,
    RQ_TIME,
    SETTLE_TIMEOUT,
    TASK,
    DrillError,
    Fleet,
    Report,
    Servers,
    Sizes,
    Submitter,
    child_env,
    completed_count,
    history,
    job_counts,
    started_workers,
    statuses,
    wait_ended,
    wait_history,
)
from bench.drill_sentinel import SCHEDULE, TOKEN, _last_fired, _ready, _schedules_file
from queues import JOB_KEY_PREFIX

QUEUE = "harvest"
#: submissions a second
RATE = 50
#: seconds each job that is running when the damage lands takes
LONG_RUN = 2.0
#: seconds of load before the damage
WARM = 3.0
#: h: seconds within which every worker must be visible again after the FLUSHALL
VISIBLE_AGAIN = 10
#: i: seconds within which the restarted worker must be running its job again
SERVES_AGAIN = 5
#: seconds the web app and the scheduler get to start (a loaded machine is slow to import them)
STARTUP = 120
#: i: a fresh pid namespace (and /proc) per start: the worker is pid 1 every time, on the same hostname
CONTAINER = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"]


def _wait(condition, fleet: Fleet, what: str, timeout: float = REGISTER_TIMEOUT) -> float:
    """Wait for `condition()`; returns the seconds it took."""
    start = time.monotonic()
    while not condition():
        fleet.check_alive()
        if time.monotonic() - start > timeout:
            raise DrillError(f"{what} did not happen in {timeout:g} s")
        time.sleep(POLL)
    return time.monotonic() - start


def _long_jobs(conn: Redis, count: int) -> list[str]:
    """Jobs of one attempt that run LONG_RUN s: a rerun or a false abandonment would show as a failure."""
    return [enqueue(conn, TASK, {"sleep": LONG_RUN}, {"queue": QUEUE, "attempts": 1}).id for _ in range(count)]


def _timed_promise(report: Report, sizes: Sizes, kept: bool, text: str) -> None:
    """A promise on how fast something came back: broken in a full drill, a note in the quick form."""
    if sizes.timed:
        report.promise(kept, text)
    elif not kept:
        report.notes.append(f"late (not a promise in the quick form): {text}")


def _abandoned(report: Report, runs: dict, job_ids: list[str]) -> int:
    count = sum(1 for j in job_ids for _, s, _ in runs.get(j, ()) if s == "abandoned")
    report.figures["runs taken for abandoned"] = count
    return count


def drill_g(servers: Servers, sizes: Sizes, logs: Path) -> Report:
    """Redis down past the lease under load: finished runs are recorded once, never rerun or failed."""
    report = Report(
        "g",
        f"Redis down {sizes.redis_outage:g} s (stopped, started again on its port from its AOF) under load; "
        f"{sizes.workers} worker processes on {QUEUE}, a scheduler, the web app",
    )
    redis, database_url, conn = servers.stage("g", persistent=True)
    env = child_env(servers.root, redis.url, database_url, BULLRQ_SCHEDULES=str(_schedules_file(servers.root)))
    env.update(ADMIN_TOKEN=TOKEN)
    web_port = free_port()
    seconds = WARM + sizes.redis_outage + sizes.load_seconds * 2
    with Fleet(env, logs) as fleet, psycopg.connect(database_url, autocommit=True) as db:
        started_workers(fleet, conn, QUEUE, sizes.workers, "g")
        fleet.scheduler("g-scheduler")
        fleet.web("g-web", web_port)
        _wait(lambda: _ready(web_port) and _last_fired(db) > 0, fleet, "the web app or the scheduler", STARTUP)
        submitter = Submitter(redis.url, QUEUE, int(seconds * RATE), seconds, sizes.job_sleep)
        submitter.start()
        time.sleep(WARM)
        in_flight = _long_jobs(conn, sizes.workers)
        _wait(lambda: all(s == "started" for s in statuses(conn, in_flight).values()), fleet, "the long jobs to start")
        redis.stop()
        down_at = time.time()
        time.sleep(sizes.redis_outage)
        redis.start()
        up_at = time.time()
        before = completed_count(conn, QUEUE)
        back = {
            "jobs completing again": _wait(lambda: completed_count(conn, QUEUE) > before, fleet, "jobs completing",
                                           SETTLE_TIMEOUT),
            "web /readyz 200": _wait(lambda: _ready(web_port), fleet, "the web app answering"),
            "scheduler fired again": _wait(lambda: _last_fired(db) > up_at, fleet, "the scheduler firing"),
        }  # fmt: skip
        submitter.finish()
        acked = submitter.acked + in_flight
        wait_ended(conn, acked, fleet=fleet)
        wait_history(conn)
        fleet.check_alive()
    report.figures.update(
        {
            "jobs submitted": submitter.total + len(in_flight),
            "acknowledged": len(acked),
            "not acknowledged (Redis down)": len(submitter.unacked),
            "runs in flight when Redis stopped (one attempt each)": len(in_flight),
        }
    )
    runs = job_counts(report, conn, database_url, acked, QUEUE)
    abandoned = _abandoned(report, runs, acked)
    ended = statuses(conn, in_flight)
    in_flight_ok = sum(1 for j in in_flight if ended[j] == "finished")
    report.figures["runs in flight: finished (not rerun, not failed)"] = f"{in_flight_ok} / {len(in_flight)}"
    for part, took in back.items():
        report.figures[f"Redis back to {part}"] = f"{took:.1f} s"
    report.notes.append(f"Redis was down from {_clock(down_at)} to {_clock(up_at)}")
    report.promise(abandoned == 0, f"{abandoned} run(s) taken for abandoned (their workers were alive)")
    report.promise(in_flight_ok == len(in_flight), "a run in flight during the outage was rerun or failed")
    return report


def _fired(conn: Redis) -> list[float]:
    """Slots of the drill's schedule that have a job in Redis (those fired before a flush went with it)."""
    slots = []
    for key in conn.scan_iter(match=JOB_KEY_PREFIX + "*", count=1000):
        schedule, slot = conn.hmget(key, "schedule_id", "schedule_slot")
        if schedule and slot and schedule.decode() == SCHEDULE:
            slots.append(datetime.strptime(slot.decode(), RQ_TIME).replace(tzinfo=UTC).timestamp())
    return slots


def drill_h(servers: Servers, sizes: Sizes, logs: Path) -> Report:
    """FLUSHALL under load: workers register again, schedules keep firing, no history row stays `started`."""
    report = Report(
        "h",
        f"FLUSHALL under load; {sizes.workers} worker processes on {QUEUE}, a scheduler (every second), "
        f"{sizes.flush_load:g} s of load after it",
    )
    redis, database_url, conn = servers.stage("h")
    env = child_env(servers.root, redis.url, database_url, BULLRQ_SCHEDULES=str(_schedules_file(servers.root)))
    seconds = WARM + sizes.flush_load
    with Fleet(env, logs) as fleet, psycopg.connect(database_url, autocommit=True) as db:
        names = started_workers(fleet, conn, QUEUE, sizes.workers, "h")
        fleet.scheduler("h-scheduler")
        _wait(lambda: _last_fired(db) > 0, fleet, "the scheduler", STARTUP)
        submitter = Submitter(redis.url, QUEUE, int(seconds * RATE), seconds, sizes.job_sleep)
        submitter.start()
        time.sleep(WARM / 2)
        in_flight = _long_jobs(conn, sizes.workers)
        time.sleep(WARM / 2)  # long enough for their `started` rows
        acked_before = len(submitter.acked)
        conn.flushall()
        flushed_at = time.time()
        visible = _wait(lambda: all(find_rq_worker(conn, fleet.procs[n].pid) for n in names), fleet,
                        "every worker registering again", timeout=60)  # fmt: skip
        counted = queue_stats(conn)["queues"][QUEUE]["workers"]
        submitter.finish()
        after = submitter.acked[acked_before + 1 :]  # one submission may have raced the flush
        wait_ended(conn, after, fleet=fleet)
        # a loaded scheduler fires late: wait for slots due after the flush, then a few more
        _wait(lambda: any(s > flushed_at + 1 for s in _fired(conn)), fleet, "a slot after the flush", 60)
        firing = time.time() - flushed_at
        time.sleep(3)
        wait_ended(conn, after, fleet=fleet)
        wait_history(conn)
        fleet.check_alive()
        started_rows = db.execute("SELECT count(*) FROM job_runs WHERE status = 'started'").fetchone()[0]
        skipped = {round(r[0].timestamp(), 3) for r in db.execute(
            "SELECT started_at FROM job_runs WHERE status = 'skipped' AND schedule_id = %s", (SCHEDULE,))}
        in_flight_rows = Counter(
            s for j in in_flight for _, s, _ in history(database_url).get(j, ()) if s != "started"
        )
    report.figures.update(
        {
            "jobs submitted": submitter.total,
            "acknowledged before the flush (gone with it)": acked_before,
            "acknowledged": len(after),
            f"flush to every worker visible again (promise: {VISIBLE_AGAIN} s)": f"{visible:.1f} s",
            "workers counted by the stats after it": f"{counted} / {len(names)}",
        }
    )
    job_counts(report, conn, database_url, after, QUEUE)
    slots = Counter(round(s, 3) for s in _fired(conn))
    first, last = (min(slots), max(slots)) if slots else (0, 0)
    expected = {round(first + n, 3) for n in range(int(round(last - first)) + 1)} if slots else set()
    missed, doubled = len(expected - set(slots) - skipped), sum(1 for n in slots.values() if n > 1)
    report.figures.update(
        {
            "slots fired by jobs created after the flush": len(slots),
            "slots skipped (the previous run still going)": len(expected & skipped),
            "flush to the first slot due after it fired": f"{firing:.1f} s",
            "slots fired more than once": doubled,
            "slots missed": missed,
            "history rows left `started`": started_rows,
            "runs in flight at the flush: final rows": ", ".join(f"{n} {s}" for s, n in in_flight_rows.items())
            or "none",
        }
    )
    _timed_promise(report, sizes, visible <= VISIBLE_AGAIN, f"workers visible again only after {visible:.1f} s")
    report.promise(counted == len(names), f"the stats count {counted} of {len(names)} workers")
    report.promise(any(s > flushed_at + 1 for s in slots), "the schedule stopped firing after the flush")
    report.promise(doubled == 0, f"{doubled} slot(s) fired more than once")
    # a scheduler late by more than MISSED_AFTER collapses the slots it missed into one run (by design): on a
    # loaded machine that is lateness, not a fault of the flush
    _timed_promise(report, sizes, missed == 0, f"{missed} slot(s) missed")
    report.promise(started_rows == 0, f"{started_rows} history row(s) left `started`")
    return report


def drill_i(servers: Servers, sizes: Sizes, logs: Path) -> Report:
    """SIGKILL mid-job a worker that restarts under its previous name: it serves again at once and its job is
    retried once."""
    report = Report(
        "i",
        f"SIGKILL mid-job ({sizes.container_kills} time(s)) a worker on {QUEUE} that restarts as pid 1 with the same "
        "hostname (a pid namespace per start, as in a container)",
    )
    if subprocess.run([*CONTAINER, "true"], capture_output=True).returncode != 0:
        raise DrillError("cannot make a pid namespace here (unshare --pid needs root or user namespaces)")
    redis, database_url, conn = servers.stage("i")
    name = "i-1"
    worker_key = f"rq:worker:{name}.{socket.gethostname()}.1"
    argv = [*CONTAINER, sys.executable, "-m", "app.cli.workers", "run", QUEUE, "--name", name]
    jobs, again = [], []
    with Fleet(child_env(servers.root, redis.url, database_url), logs) as fleet:
        fleet.spawn(name, argv)
        _wait(lambda: conn.exists(worker_key), fleet, "the worker to register")
        for _ in range(sizes.container_kills):
            job = enqueue(conn, TASK, {"sleep": sizes.long_job * 3}, {"queue": QUEUE, "attempts": ATTEMPTS}).id
            jobs.append(job)
            _wait(lambda job=job: statuses(conn, [job])[job] == "started", fleet, "the job to start")
            time.sleep(0.5)  # mid-job
            fleet.kill(name)
            killed = conn.hget(JOB_KEY_PREFIX + job, "started_at")
            fleet.spawn(name, argv)
            again.append(_wait(lambda job=job, killed=killed: conn.hget(JOB_KEY_PREFIX + job, "started_at") != killed
                               and statuses(conn, [job])[job] == "started", fleet, "the job to run again", 60))
            wait_ended(conn, [job], timeout=sizes.long_job * 3 + 30, fleet=fleet)
        follow = [enqueue(conn, TASK, {}, {"queue": QUEUE}).id for _ in range(10)]
        wait_ended(conn, follow, timeout=30, fleet=fleet)
        wait_history(conn)
        fleet.check_alive()
    report.figures.update({"jobs submitted": len(jobs) + len(follow), "acknowledged": len(jobs) + len(follow)})
    runs = job_counts(report, conn, database_url, jobs + follow, QUEUE)
    retried_once = sum(1 for j in jobs if [s for _, s, _ in runs.get(j, ())] == ["abandoned", "completed"])
    report.figures.update(
        {
            "worker SIGKILLs mid-job": len(jobs),
            f"restart to its job running again, max (promise: {SERVES_AGAIN} s)": f"{max(again):.1f} s",
            "killed jobs retried exactly once (abandoned, then completed)": f"{retried_once} / {len(jobs)}",
        }
    )
    _timed_promise(report, sizes, max(again) <= SERVES_AGAIN,
                   f"the restarted worker took {max(again):.1f} s to run its job again")
    report.promise(retried_once == len(jobs), "a killed job was not retried exactly once")
    return report


def _clock(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%H:%M:%S")

