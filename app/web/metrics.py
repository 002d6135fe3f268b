"""Prometheus metrics at `/metrics` (text format 0.0.4), behind the admin token.

Queue depth by state, workers, pause state, the scheduler's liveness and process restarts come from Redis; jobs
processed and failed per queue and task from the history rollup (all time); the job duration histogram from the
rollup's buckets over the last 24 hours.
"""

from __future__ import annotations

from collections import defaultdict

from flask import Blueprint, Response, current_app

from app.alerts import store as alert_store
from app.runtime.stats import queue_stats
from app.scheduling.scheduler import liveness
from app.store import rollup
from app.web.auth import require_token
from app.web.db import get_db
from queues import PROCESS_RESTARTS_KEY

bp = Blueprint("metrics", __name__)
bp.before_request(require_token)

#: histogram boundaries, seconds
LE = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
STATES = ("waiting", "active", "delayed", "completed", "failed", "canceled")


def _label(value: str) -> str:
    return str(value).replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")


class _Text:
    def __init__(self):
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]

    def sample(self, name: str, value, **labels) -> None:
        inner = ",".join(f'{key}="{_label(val)}"' for key, val in labels.items())
        self.lines.append(f"{name}{{{inner}}} {value}" if inner else f"{name} {value}")


@bp.get("/metrics")
def metrics():
    """Prometheus text exposition of queues, jobs and Redis."""
    redis = current_app.extensions["bullrq.redis"]
    stats = queue_stats(redis)["queues"]
    out = _Text()
    out.family("bullrq_queue_jobs", "gauge", "Jobs of each queue in each state.")
    for queue, row in stats.items():
        for state in STATES:
            out.sample("bullrq_queue_jobs", row[state], queue=queue, state=state)
    out.family("bullrq_queue_paused", "gauge", "1 while the queue is paused.")
    for queue, row in stats.items():
        out.sample("bullrq_queue_paused", int(row["paused"]), queue=queue)
    out.family("bullrq_queue_workers", "gauge", "Live worker processes serving the queue.")
    for queue, row in stats.items():
        out.sample("bullrq_queue_workers", row["workers"], queue=queue)

    db = get_db()
    out.family("bullrq_jobs_processed_total", "counter", "Finished attempts per queue and task.")
    out.family("bullrq_jobs_failed_total", "counter", "Failed, timed-out or abandoned attempts per queue and task.")
    totals = db.execute(
        "SELECT queue, task, sum(total)::bigint AS total, sum(failed)::bigint AS failed FROM job_runs_hourly "
        "GROUP BY 1, 2 ORDER BY 1, 2"
    ).fetchall()
    for row in totals:
        out.sample("bullrq_jobs_processed_total", row["total"], queue=row["queue"], task=row["task"])
    for row in totals:
        out.sample("bullrq_jobs_failed_total", row["failed"], queue=row["queue"], task=row["task"])

    out.family("bullrq_job_duration_seconds", "histogram", "Durations of completed runs over the last 24 hours.")
    histograms: dict[str, dict[int, int]] = defaultdict(dict)
    sums = {row["queue"]: row["ms"] for row in db.execute(
        "SELECT queue, sum(duration_ms) AS ms FROM job_runs_hourly WHERE hour >= now() - interval '24 hours' "
        "GROUP BY 1"
    )}  # fmt: skip
    for row in db.execute(
        "SELECT queue, bucket, sum(runs)::bigint AS runs FROM job_runs_hourly_buckets "
        "WHERE hour >= now() - interval '24 hours' GROUP BY 1, 2"
    ):
        histograms[row["queue"]][row["bucket"]] = row["runs"]
    for queue, buckets in sorted(histograms.items()):
        for le in LE:
            count = sum(n for b, n in buckets.items() if rollup.upper_bound(b) <= le * 1000)
            out.sample("bullrq_job_duration_seconds_bucket", count, queue=queue, le=le)
        out.sample("bullrq_job_duration_seconds_bucket", sum(buckets.values()), queue=queue, le="+Inf")
        out.sample("bullrq_job_duration_seconds_sum", round((sums.get(queue) or 0) / 1000, 6), queue=queue)
        out.sample("bullrq_job_duration_seconds_count", sum(buckets.values()), queue=queue)

    scheduler = liveness(redis)
    out.family("bullrq_scheduler_up", "gauge", "1 while a scheduler holds the lease and completes its ticks.")
    out.sample("bullrq_scheduler_up", int(scheduler["ok"]))
    out.family("bullrq_scheduler_last_tick_age_seconds", "gauge", "Seconds since the active scheduler's last tick.")
    if scheduler["last_tick_age"] is not None:
        out.sample("bullrq_scheduler_last_tick_age_seconds", scheduler["last_tick_age"])
    out.family("bullrq_process_restarts_total", "counter", "Crashed processes restarted by a supervisor.")
    for field, count in sorted(redis.hgetall(PROCESS_RESTARTS_KEY).items()):
        host, _, process = field.decode().rpartition("/")
        out.sample("bullrq_process_restarts_total", int(count), host=host, process=process)
    _alerts(out, db)

    memory = redis.info("memory")
    out.family("bullrq_redis_memory_bytes", "gauge", "Memory used by Redis.")
    out.sample("bullrq_redis_memory_bytes", memory.get("used_memory", 0))
    return Response("\n".join(out.lines) + "\n", mimetype="text/plain; version=0.0.4")


def _alerts(out: _Text, db) -> None:
    """Open alerts per condition (every condition, 0 when none), and one series per open alert (app.alerts)."""
    out.family("bullrq_alerts_open", "gauge", "Open alerts per condition.")
    for condition, count in alert_store.open_counts(db).items():
        out.sample("bullrq_alerts_open", count, condition=condition)
    out.family("bullrq_alert_open", "gauge", "1 for each open alert, by its key (condition and subject).")
    for row in db.execute("SELECT key, condition FROM alerts WHERE status = 'open' ORDER BY key"):
        out.sample("bullrq_alert_open", 1, key=row["key"], condition=row["condition"])
