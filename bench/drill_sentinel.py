"""Drill f: SIGKILL the Redis master of a Sentinel deployment under a steady load of jobs.

The product is pointed at the sentinels only through the environment (REDIS_SENTINELS, REDIS_SENTINEL_MASTER,
REDIS_PASSWORD, REDIS_SENTINEL_PASSWORD): worker processes, a scheduler with a per-second entry and the web app
under gunicorn. After each kill the drill times, from the moment of the kill, the sentinels' promotion, jobs
completing again, `/readyz` answering 200 and the scheduler firing again; between kills the dead node comes back
and the sentinels make it the new master's replica, so the next kill has a replica to promote.

Replication is asynchronous, so the promise is drawn where Redis draws it: a job whose enqueue a replica confirmed
(`enqueue(wait_replicas=1)`: WAIT in the enqueue's own round trip) is never lost. Jobs acknowledged by the master
alone are counted apart, as are runs repeated because the master died before the end of a run reached the replica
(execution is at-least-once). Several submitters run at once, so several jobs are in flight at each kill.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from app.connections import redis_from_url
from app.local.servers import free_port
from app.runtime.redis_scripts import SCRIPTS
from bench.drill_kit import (
    ENDED,
    POLL,
    REGISTER_TIMEOUT,
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
    job_counts,
    started_workers,
    statuses,
    wait_ended,
    wait_history,
)
from bench.sentinel_group import SentinelGroup

QUEUE = "harvest"
SCHEDULE = "drill-every-second"
TOKEN = "drill-token-0123456789abcdef"
#: submissions a second, shared by SUBMITTERS threads of their own connection
RATE = 100
SUBMITTERS = 4


def _schedules_file(root: Path) -> Path:
    path = root / "sentinel-schedules.yaml"
    path.write_text(
        "schedules:\n"
        f"  - id: {SCHEDULE}\n    task: {TASK}\n    queue: {QUEUE}\n"
        '    cron: "* * * * * *"\n    timezone: UTC\n'
    )
    return path


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _last_fired(db: psycopg.Connection) -> float:
    row = db.execute("SELECT last_run_at FROM job_schedules WHERE id = %s", (SCHEDULE,)).fetchone()
    return row[0].timestamp() if row and row[0] else 0.0


class _Recovery:
    """When, after a kill, each part of the system was seen working again."""

    PARTS = ("sentinels promoted the replica", "jobs completing again", "web /readyz 200", "scheduler fired again")

    def __init__(self, killed_at: float):
        self.killed_at = killed_at
        self.seen: dict[str, float] = {}
        self.replica_back = 0.0  #: seconds until the killed node replicated from the new master

    def check(self, part: str, working) -> None:
        """Note when `working()` first holds (it is not asked again after that)."""
        if part not in self.seen and working():
            self.seen[part] = time.time() - self.killed_at

    @property
    def complete(self) -> bool:
        return len(self.seen) == len(self.PARTS)


def drill_f(servers: Servers, sizes: Sizes, logs: Path) -> Report:
    """SIGKILL the Redis master under Sentinel: everything follows the promoted replica, no confirmed job is lost."""
    report = Report(
        "f",
        f"SIGKILL the Redis master {sizes.failovers} time(s) under {RATE} jobs/s; a master, a replica and 3 "
        f"sentinels; {sizes.workers} worker processes on {QUEUE}, a scheduler, the web app",
    )
    group = SentinelGroup(servers.root / "sentinel-f")
    servers.cleanups.append(group.stop)
    group.start()
    database_url = servers.database("drill_f")
    url = group.target.url()
    conn = redis_from_url(url)
    SCRIPTS.load(conn)
    web_port = free_port()
    env = child_env(servers.root, url, database_url, BULLRQ_SCHEDULES=str(_schedules_file(servers.root)))
    env.pop("REDIS_URL")  # configured the way an operator does it: the sentinels' variables, no URL
    env.update(group.env(), ADMIN_TOKEN=TOKEN)
    recoveries: list[_Recovery] = []
    with Fleet(env, logs) as fleet, psycopg.connect(database_url, autocommit=True, connect_timeout=5) as db:
        started_workers(fleet, conn, QUEUE, sizes.workers, "f")
        fleet.scheduler("f-scheduler")
        fleet.web("f-web", web_port)
        _wait(lambda: _ready(web_port) and _last_fired(db) > 0, fleet, "the web app or the scheduler")
        seconds = sizes.failovers * (sizes.failover_load + 40)  # an upper bound: `halt` ends the load
        per_thread = int(seconds * RATE / SUBMITTERS)
        submitters = [
            Submitter(url, QUEUE, per_thread, seconds, sizes.job_sleep, replicas=1) for _ in range(SUBMITTERS)
        ]
        for submitter in submitters:
            submitter.start()
        for n in range(sizes.failovers):
            time.sleep(sizes.failover_load / 2)
            completed_before = completed_count(conn, QUEUE)
            killed = group.kill_master()
            recovery = _Recovery(time.time())
            recoveries.append(recovery)
            confirmed_before = sum(len(s.replicated) for s in submitters)
            deadline = time.monotonic() + SETTLE_TIMEOUT
            while not recovery.complete:
                recovery.check("sentinels promoted the replica", lambda: group.master_port() not in (None, killed.port))
                promoted = "sentinels promoted the replica" in recovery.seen
                recovery.check("jobs completing again", lambda: completed_count(conn, QUEUE) > completed_before >= 0)
                recovery.check("web /readyz 200", lambda: promoted and _ready(web_port))
                recovery.check("scheduler fired again", lambda: _last_fired(db) > recovery.killed_at)
                fleet.check_alive()
                if time.monotonic() > deadline:
                    missing = [p for p in _Recovery.PARTS if p not in recovery.seen]
                    raise DrillError(f"after kill {n + 1}, not working again in {SETTLE_TIMEOUT} s: {missing}")
                time.sleep(POLL)
            time.sleep(sizes.failover_load / 2)
            group.rejoin(killed)  # the killed node comes back as the replica the next kill needs
            recovery.replica_back = time.time() - recovery.killed_at
        time.sleep(sizes.failover_load / 2)  # confirmations again, now that there is a replica
        confirmed_after_last = sum(len(s.replicated) for s in submitters) - confirmed_before
        for submitter in submitters:
            submitter.halt.set()
        for submitter in submitters:
            submitter.finish()
        acked = [job_id for s in submitters for job_id in s.acked]
        replicated = [job_id for s in submitters for job_id in s.replicated]
        unconfirmed = sorted(set(acked) - set(replicated))
        wait_ended(conn, replicated, fleet=fleet)  # not the unconfirmed: one the dead master took away never ends
        wait_history(conn)
        fleet.check_alive()
    report.figures.update(
        {
            "jobs submitted": len(acked) + sum(len(s.unacked) for s in submitters),
            "acknowledged": len(acked),
            "acknowledged and confirmed by a replica (WAIT)": len(replicated),
            "confirmed after the last kill (by the rejoined node)": confirmed_after_last,
            "not acknowledged (no master for a moment)": sum(len(s.unacked) for s in submitters),
        }
    )
    runs = job_counts(report, conn, database_url, replicated, QUEUE, exactly_once=False)
    now = statuses(conn, unconfirmed)
    report.figures["acknowledged by the master alone"] = len(unconfirmed)
    report.figures["acknowledged by the master alone, lost"] = sum(1 for s in now.values() if s not in ENDED)
    with psycopg.connect(database_url) as db:
        # a worker's RQ name is `<process name>.<host>.<pid>`
        last_runs = dict(db.execute("SELECT split_part(worker, '.', 1), max(ended_at) FROM job_runs GROUP BY 1"))
    last_kill = recoveries[-1].killed_at
    stale = [w for w in (f"f-{i}" for i in range(1, sizes.workers + 1)) if not _after(last_runs.get(w), last_kill)]
    report.figures["workers that ran jobs after the last failover"] = f"{sizes.workers - len(stale)} / {sizes.workers}"
    for part in _Recovery.PARTS:
        report.figures[f"kill to {part}, max"] = f"{max(r.seen[part] for r in recoveries):.1f} s"
    rejoined = max(r.replica_back for r in recoveries)
    report.figures["kill to the killed node back as a replica, max"] = f"{rejoined:.1f} s"
    duplicates = sum(1 for job_id in replicated if len(runs.get(job_id, ())) > 1)
    report.notes.append(
        f"{duplicates} confirmed job(s) ran more than once: the end of their run was on the killed master only, so "
        "the promoted replica ran them again (at-least-once)"
    )
    for n, recovery in enumerate(recoveries, 1):
        report.notes.append(
            f"kill {n}: " + "; ".join(f"{part} after {recovery.seen[part]:.1f} s" for part in _Recovery.PARTS)
        )
    report.promise(not stale, f"worker(s) {', '.join(stale)} ran no job after the last failover")
    report.promise(confirmed_after_last > 0, "no submission was confirmed by a replica after the last kill")
    return report


def _after(moment: datetime | None, epoch: float) -> bool:
    return moment is not None and moment.astimezone(UTC).timestamp() > epoch


def _wait(condition, fleet: Fleet, what: str) -> None:
    deadline = time.monotonic() + REGISTER_TIMEOUT
    while not condition():
        fleet.check_alive()
        if time.monotonic() > deadline:
            raise DrillError(f"{what} did not come up in {REGISTER_TIMEOUT} s")
        time.sleep(0.2)

