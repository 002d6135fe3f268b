"""The alert conditions: what is wrong right now, read from Redis and PostgreSQL, as one `Finding` per subject.

A finding is a fact, not yet an alert: the store opens an alert once its finding has held for `hold` seconds and
clears it once the finding has stayed away for ALERT_CLEAR_AFTER seconds. Keys name the condition and its subject
(`backlog:sync`, `failed:sync:sync.manual`, `schedule_failed:weekly-report`), so each subject has one alert.

| condition         | finding                                                                 | from            |
|-------------------|-------------------------------------------------------------------------|-----------------|
| failed            | a task's jobs failed for good within its queue's `failed_window`       | job_runs        |
| failure_rate      | failed share of a queue's attempts over `failure_window` > threshold   | job_runs        |
| backlog           | waiting jobs > `backlog_waiting`, or the oldest waited > `backlog_age`  | Redis           |
| no_worker         | no live worker (heartbeat within 60 s) serves the queue                 | Redis           |
| no_scheduler      | no scheduler process holds the lead                                     | Redis           |
| schedule_late     | an enabled entry's due run has not fired for `schedule_late_after`      | job_schedules   |
| schedule_failed   | an entry's last run failed                                              | job_schedules   |
| schedule_stuck    | an entry's run has gone on past its `max_runtime`                       | job_schedules   |
| history_behind    | the oldest run-history row waiting in Redis is older than the threshold | Redis stream    |
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from urllib.parse import urlencode

import psycopg
from redis import Redis

from app.alerts.settings import AlertSettings
from app.runtime.groups import waiting_lists_of
from app.scheduling import schedule_store
from app.tasks import queue_keys
from queues import HISTORY_STREAM, JOB_KEY_PREFIX, QUEUES, SCHEDULER_LEADER_KEY

logger = logging.getLogger(__name__)

#: seconds since its last heartbeat after which a registered worker counts as gone (it beats every 5 s)
HEARTBEAT_STALE = 60
#: seconds: the longest a run may have started before its end (the longest queue timeout, with room)
_LONGEST_RUN = max(spec.timeout for spec in QUEUES.values()) + 3600
#: errors named in a message about failures
TOP_ERRORS = 3
#: run statuses the history page counts as failed
_FAILED_STATUSES = ("failed", "timed_out", "abandoned")


class Condition(StrEnum):
    FAILED = "failed"
    FAILURE_RATE = "failure_rate"
    BACKLOG = "backlog"
    NO_WORKER = "no_worker"
    NO_SCHEDULER = "no_scheduler"
    SCHEDULE_LATE = "schedule_late"
    SCHEDULE_FAILED = "schedule_failed"
    SCHEDULE_STUCK = "schedule_stuck"
    HISTORY_BEHIND = "history_behind"


@dataclass(frozen=True)
class Finding:
    """One condition holding for one subject, as seen now."""

    key: str
    condition: Condition
    summary: str  #: one line for people, with the figures
    path: str  #: the page that shows it
    count: int = 0
    details: dict = field(default_factory=dict)
    queue: str | None = None
    task: str | None = None
    schedule_id: str | None = None
    hold: float = 0  #: seconds the finding must persist before its alert opens


def evaluate(redis: Redis, conn: psycopg.Connection, settings: AlertSettings, now: datetime,
             live: dict[str, dict]) -> list[Finding]:  # fmt: skip
    """Every finding that holds now. `live` are the alerts pending or open, by key (failures are counted from
    the start of theirs)."""
    findings = []
    findings += _failed(conn, settings, now, live)
    findings += _failure_rate(conn, settings, now)
    findings += _queues(redis, settings, now)
    findings += _scheduler(redis, settings)
    findings += _schedules(conn, settings, now)
    findings += _history(redis, settings, now)
    return findings


# -- jobs ------------------------------------------------------------------------------------------------------


def _failed(conn: psycopg.Connection, settings: AlertSettings, now: datetime, live: dict) -> list[Finding]:
    specs = {name: spec for name, spec in settings.queues.items() if spec.failed}
    if not specs:
        return []
    longest = max(spec.failed_window for spec in specs.values())
    recent = conn.execute(
        "SELECT queue, task, max(ended_at) AS last FROM job_runs WHERE status = 'failed' AND started_at >= %s "
        "AND ended_at >= %s GROUP BY queue, task",
        (now - timedelta(seconds=longest + _LONGEST_RUN), now - timedelta(seconds=longest)),
    ).fetchall()
    findings = []
    for row in recent:
        spec = specs.get(row["queue"])
        if spec is None or row["task"] in spec.quiet_tasks:
            continue
        window = timedelta(seconds=spec.failed_window)
        if row["last"] < now - window:
            continue
        key = f"{Condition.FAILED}:{row['queue']}:{row['task']}"
        since = (live[key]["first_seen_at"] if key in live else now) - window
        where = ("status = 'failed' AND queue = %(queue)s AND task = %(task)s AND started_at >= %(bound)s "
                 "AND ended_at >= %(since)s")  # fmt: skip
        params = {"queue": row["queue"], "task": row["task"], "since": since,
                  "bound": since - timedelta(seconds=_LONGEST_RUN)}  # fmt: skip
        total = conn.execute(f"SELECT count(*) AS n, min(ended_at) AS first FROM job_runs WHERE {where}",
                             params).fetchone()  # fmt: skip
        errors = conn.execute(
            "SELECT coalesce(error_type, 'error') || ': ' || left(coalesce(error_message, ''), 200) AS error, "
            f"count(*) AS n FROM job_runs WHERE {where} GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT {TOP_ERRORS}",
            params,
        ).fetchall()
        findings.append(Finding(
            key=key,
            condition=Condition.FAILED,
            summary=f"{total['n']} job(s) of {row['task']} on queue {row['queue']} failed for good",
            path="/admin/jobs?" + urlencode({"name": row["task"], "status": "failed"}),
            count=total["n"],
            details={"first_failure": total["first"].isoformat(), "last_failure": row["last"].isoformat(),
                     "top_errors": [{"error": e["error"], "count": e["n"]} for e in errors],
                     "window_seconds": spec.failed_window},
            queue=row["queue"],
            task=row["task"],
        ))  # fmt: skip
    return findings


def _failure_rate(conn: psycopg.Connection, settings: AlertSettings, now: datetime) -> list[Finding]:
    specs = {name: spec for name, spec in settings.queues.items() if spec.failure_rate > 0}
    if not specs:
        return []
    longest = max(spec.failure_window for spec in specs.values())
    rows = conn.execute(
        "SELECT r.queue, count(*) AS total, count(*) FILTER (WHERE r.status = ANY(%(failed)s)) AS failed "
        "FROM job_runs r JOIN unnest(%(queues)s::text[], %(since)s::timestamptz[]) AS w(queue, since) "
        "ON r.queue = w.queue WHERE r.started_at >= %(bound)s AND r.ended_at >= w.since "
        "AND r.status NOT IN ('started', 'skipped') GROUP BY r.queue",
        {"failed": list(_FAILED_STATUSES), "queues": list(specs),
         "since": [now - timedelta(seconds=spec.failure_window) for spec in specs.values()],
         "bound": now - timedelta(seconds=longest + _LONGEST_RUN)},
    ).fetchall()  # fmt: skip
    findings = []
    for row in rows:
        spec = specs[row["queue"]]
        rate = row["failed"] / row["total"] if row["total"] else 0.0
        if row["total"] < spec.failure_min_runs or rate <= spec.failure_rate:
            continue
        minutes = spec.failure_window / 60
        findings.append(Finding(
            key=f"{Condition.FAILURE_RATE}:{row['queue']}",
            condition=Condition.FAILURE_RATE,
            summary=(f"queue {row['queue']}: {rate:.0%} of attempts failed over the last {minutes:g} min "
                     f"({row['failed']} of {row['total']}; threshold {spec.failure_rate:.0%})"),
            path="/admin/history?hours=24",
            count=row["failed"],
            details={"failed": row["failed"], "total": row["total"], "rate": round(rate, 4),
                     "threshold": spec.failure_rate, "window_seconds": spec.failure_window},
            queue=row["queue"],
        ))  # fmt: skip
    return findings


# -- queues and processes --------------------------------------------------------------------------------------


def _queues(redis: Redis, settings: AlertSettings, now: datetime) -> list[Finding]:
    """Backlog (count and oldest waiting job, in lanes and groups' lists) and live workers of every queue, in four
    round trips."""
    names = list(settings.queues)
    lists = waiting_lists_of(redis, names)
    pipe = redis.pipeline(transaction=False)
    for name in names:
        for lane in lists[name]:
            pipe.llen(lane)
            pipe.lindex(lane, 0)  # each list is FIFO: its head waited longest (a requeued job goes to the head)
        pipe.smembers(queue_keys(name).workers)
    replies = iter(pipe.execute())
    waiting, heads, workers = {}, {}, {}
    for name in names:
        lanes = [(next(replies), next(replies)) for _ in lists[name]]
        waiting[name] = sum(length for length, _ in lanes)
        heads[name] = [head.decode() for _, head in lanes if head]
        workers[name] = sorted(w.decode() for w in next(replies))
    pipe = redis.pipeline(transaction=False)
    for name in names:
        for job_id in heads[name]:
            pipe.hmget(JOB_KEY_PREFIX + job_id, "enqueued_at", "created_at")
    every_worker = sorted({w for ws in workers.values() for w in ws})
    for worker in every_worker:
        pipe.hget(worker, "last_heartbeat")
    replies = iter(pipe.execute())
    oldest = {}
    for name in names:
        times = [_rq_time(enqueued or created) for enqueued, created in (next(replies) for _ in heads[name])]
        times = [t for t in times if t is not None]
        oldest[name] = min(times) if times else None
    beats = {worker: _rq_time(next(replies)) for worker in every_worker}
    alive = {w for w, beat in beats.items() if beat is not None and (now - beat).total_seconds() <= HEARTBEAT_STALE}

    findings = []
    for name in names:
        spec = settings.queues[name]
        age = (now - oldest[name]).total_seconds() if oldest[name] else 0.0
        too_many = spec.backlog_waiting > 0 and waiting[name] > spec.backlog_waiting
        too_old = spec.backlog_age > 0 and age > spec.backlog_age
        if too_many or too_old:
            reasons = []
            if too_many:
                reasons.append(f"{waiting[name]} jobs waiting (threshold {spec.backlog_waiting})")
            if too_old:
                reasons.append(f"the oldest has waited {duration(age)} (threshold {duration(spec.backlog_age)})")
            findings.append(Finding(
                key=f"{Condition.BACKLOG}:{name}",
                condition=Condition.BACKLOG,
                summary=f"queue {name} is backed up: {'; '.join(reasons)}",
                path=f"/admin/#queue-{name}",
                count=waiting[name],
                details={"waiting": waiting[name], "oldest_wait_seconds": round(age, 1),
                         "oldest_enqueued_at": oldest[name].isoformat() if oldest[name] else None,
                         "threshold_waiting": spec.backlog_waiting, "threshold_age_seconds": spec.backlog_age,
                         "live_workers": sum(1 for w in workers[name] if w in alive)},
                queue=name,
            ))  # fmt: skip
        live_workers = [w for w in workers[name] if w in alive]
        if spec.no_worker_after > 0 and not live_workers:
            findings.append(Finding(
                key=f"{Condition.NO_WORKER}:{name}",
                condition=Condition.NO_WORKER,
                summary=f"queue {name} has no live worker: its jobs wait ({waiting[name]} waiting)",
                path=f"/admin/#queue-{name}",
                count=waiting[name],
                details={"waiting": waiting[name], "threshold_seconds": spec.no_worker_after,
                         "registered_workers": len(workers[name])},
                queue=name,
                hold=spec.no_worker_after,
            ))  # fmt: skip
    return findings


def _scheduler(redis: Redis, settings: AlertSettings) -> list[Finding]:
    after = settings.system.no_leader_after
    if after <= 0 or redis.exists(SCHEDULER_LEADER_KEY):
        return []
    return [Finding(
        key=str(Condition.NO_SCHEDULER),
        condition=Condition.NO_SCHEDULER,
        summary="no scheduler process is active: recurring entries do not fire (start `bullrq scheduler`)",
        path="/admin/schedules",
        details={"threshold_seconds": after},
        hold=after,
    )]  # fmt: skip


def _history(redis: Redis, settings: AlertSettings, now: datetime) -> list[Finding]:
    after = settings.system.history_behind_after
    if after <= 0:
        return []
    first = redis.xrange(HISTORY_STREAM, count=1)
    if not first:
        return []
    entry_id = first[0][0].decode()
    oldest = datetime.fromtimestamp(int(entry_id.split("-")[0]) / 1000, UTC)
    age = (now - oldest).total_seconds()
    if age <= after:
        return []
    waiting = redis.xlen(HISTORY_STREAM)
    return [Finding(
        key=str(Condition.HISTORY_BEHIND),
        condition=Condition.HISTORY_BEHIND,
        summary=(f"run history is not reaching PostgreSQL: {waiting} row(s) wait in Redis, the oldest for "
                 f"{duration(age)} (is PostgreSQL down, or no worker running?)"),
        path="/admin/history?hours=24",
        count=waiting,
        details={"waiting_rows": waiting, "oldest_row_at": oldest.isoformat(), "oldest_age_seconds": round(age, 1),
                 "threshold_seconds": after},
    )]  # fmt: skip


# -- schedules -------------------------------------------------------------------------------------------------


def _schedules(conn: psycopg.Connection, settings: AlertSettings, now: datetime) -> list[Finding]:
    system = settings.system
    findings = []
    for row in schedule_store.list_schedules(conn):
        if not row["effective_enabled"]:
            continue
        entry = row["id"]
        base = {"path": "/admin/schedules", "schedule_id": entry, "queue": row["queue"], "task": row["task"]}
        late = (now - row["next_run_at"]).total_seconds() if row["next_run_at"] else 0
        if system.schedule_late_after > 0 and late > system.schedule_late_after:
            findings.append(Finding(
                key=f"{Condition.SCHEDULE_LATE}:{entry}",
                condition=Condition.SCHEDULE_LATE,
                summary=f"schedule {entry} ({row['task']}) missed its run due at {_at(row['next_run_at'])}",
                details={"due_at": row["next_run_at"].isoformat(), "late_seconds": round(late, 1),
                         "cron": row["effective_cron"], "timezone": row["effective_timezone"]},
                **base,
            ))  # fmt: skip
        if not system.schedule_failed:
            continue
        if row["last_status"] == "error":
            error = (row["last_error"] or "no error recorded").strip().splitlines()
            findings.append(Finding(
                key=f"{Condition.SCHEDULE_FAILED}:{entry}",
                condition=Condition.SCHEDULE_FAILED,
                summary=f"schedule {entry} ({row['task']}): its last run failed: {error[-1][:200] if error else ''}",
                details={"last_run_at": row["last_run_at"].isoformat() if row["last_run_at"] else None,
                         "last_error": (row["last_error"] or "")[-1000:]},
                **base,
            ))  # fmt: skip
        started = row["current_started_at"]
        if row["last_status"] == "running" and started and (now - started).total_seconds() > row["max_runtime"]:
            findings.append(Finding(
                key=f"{Condition.SCHEDULE_STUCK}:{entry}",
                condition=Condition.SCHEDULE_STUCK,
                summary=(f"schedule {entry} ({row['task']}): its run (job {row['current_job_id']}) has gone on "
                         f"for {duration((now - started).total_seconds())}, past its max_runtime of "
                         f"{duration(row['max_runtime'])}"),
                details={"job_id": row["current_job_id"], "started_at": started.isoformat(),
                         "max_runtime_seconds": row["max_runtime"]},
                **base,
            ))  # fmt: skip
    return findings


# -- formatting ------------------------------------------------------------------------------------------------


def _rq_time(raw: bytes | None) -> datetime | None:
    """A time as RQ stores it in a job or worker hash, or None."""
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw.decode().replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:.1f} h"


def _at(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
