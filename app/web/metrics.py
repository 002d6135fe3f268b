"""Prometheus metrics at `/metrics`, behind the admin token, written by prometheus_client.

One collector reads Redis and the history rollup at scrape time: the web process keeps no counter of its own, so
every gunicorn worker answers the same. Each function of `FAMILIES` yields metric families from `Sources`; a new
family is one more function in that list.

- `bullrq_queue_jobs{queue,state}` (`STATES`, deferred included), `bullrq_queue_paused{queue}`,
  `bullrq_queue_workers{queue}`: gauges, Redis now.
- `bullrq_jobs_processed_total{queue,task}`, `bullrq_jobs_failed_total{queue,task}`: counters of finished attempts
  since history began (the rollup: every run, retries and reruns of a requeued job each count once).
- `bullrq_job_duration_seconds{queue}`: a cumulative histogram of completed runs since history began.
- `bullrq_redis_memory_bytes`: gauge, INFO used_memory.
- `bullrq_scheduler_up`, `bullrq_scheduler_last_tick_age_seconds`: gauges, the scheduler's liveness.
- `bullrq_process_restarts_total{host,process}`: counter, crashed processes restarted by a supervisor.
- `bullrq_alerts_open{condition}`, `bullrq_alert_open{key,condition}`: gauges, open alerts (app.alerts).
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable, Iterator

from flask import Blueprint, Response, current_app
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

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
#: the job states `bullrq_queue_jobs` counts (deferred: waiting for their parents or their batch)
STATES = ("waiting", "active", "delayed", "deferred", "completed", "failed", "canceled")


class Sources:
    """What one scrape reads, each read once: Redis (`redis`, `queues`) and PostgreSQL (`db`)."""

    def __init__(self, redis, db):
        self.redis = redis
        self.db = db

    @functools.cached_property
    def queues(self) -> dict:
        return queue_stats(self.redis)["queues"]


def queue_families(sources: Sources) -> Iterator[Metric]:
    jobs = GaugeMetricFamily("bullrq_queue_jobs", "Jobs of each queue in each state.", labels=["queue", "state"])
    paused = GaugeMetricFamily("bullrq_queue_paused", "1 while the queue is paused.", labels=["queue"])
    workers = GaugeMetricFamily("bullrq_queue_workers", "Live worker processes serving the queue.", labels=["queue"])
    for queue, row in sources.queues.items():
        for state in STATES:
            jobs.add_metric([queue, state], row[state])
        paused.add_metric([queue], int(row["paused"]))
        workers.add_metric([queue], row["workers"])
    yield from (jobs, paused, workers)


def job_families(sources: Sources) -> Iterator[Metric]:
    processed = CounterMetricFamily("bullrq_jobs_processed_total", "Finished attempts per queue and task.",
                                    labels=["queue", "task"])
    failed = CounterMetricFamily("bullrq_jobs_failed_total",
                                 "Failed, timed-out or abandoned attempts per queue and task.",
                                 labels=["queue", "task"])
    for row in sources.db.execute(
        "SELECT queue, task, sum(total)::bigint AS total, sum(failed)::bigint AS failed FROM job_runs_hourly "
        "GROUP BY 1, 2 ORDER BY 1, 2"
    ):
        processed.add_metric([row["queue"], row["task"]], row["total"])
        failed.add_metric([row["queue"], row["task"]], row["failed"])
    yield from (processed, failed)


def duration_family(sources: Sources) -> Iterator[Metric]:
    """Completed runs by duration since history began: the rollup's fine buckets summed under each `le`."""
    histogram = HistogramMetricFamily("bullrq_job_duration_seconds", "Durations of completed runs.",
                                      labels=["queue"])
    buckets: dict[str, dict[int, int]] = defaultdict(dict)
    for row in sources.db.execute(
        "SELECT queue, bucket, sum(runs)::bigint AS runs FROM job_runs_hourly_buckets GROUP BY 1, 2"
    ):
        buckets[row["queue"]][row["bucket"]] = row["runs"]
    seconds = {row["queue"]: (row["ms"] or 0) / 1000 for row in sources.db.execute(
        "SELECT queue, sum(duration_ms) AS ms FROM job_runs_hourly GROUP BY 1"
    )}  # fmt: skip
    for queue, runs in sorted(buckets.items()):
        cumulative = [(str(le), sum(n for b, n in runs.items() if rollup.upper_bound(b) <= le * 1000)) for le in LE]
        histogram.add_metric([queue], [*cumulative, ("+Inf", sum(runs.values()))], round(seconds.get(queue, 0), 6))
    yield histogram


def redis_families(sources: Sources) -> Iterator[Metric]:
    memory = GaugeMetricFamily("bullrq_redis_memory_bytes", "Memory used by Redis.")
    memory.add_metric([], sources.redis.info("memory").get("used_memory", 0))
    yield memory


def scheduler_families(sources: Sources) -> Iterator[Metric]:
    scheduler = liveness(sources.redis)
    up = GaugeMetricFamily("bullrq_scheduler_up", "1 while a scheduler holds the lease and completes its ticks.")
    up.add_metric([], int(scheduler["ok"]))
    age = GaugeMetricFamily("bullrq_scheduler_last_tick_age_seconds", "Seconds since the active scheduler's last tick.")
    if scheduler["last_tick_age"] is not None:
        age.add_metric([], scheduler["last_tick_age"])
    restarts = CounterMetricFamily("bullrq_process_restarts_total", "Crashed processes restarted by a supervisor.",
                                   labels=["host", "process"])
    for field, count in sorted(sources.redis.hgetall(PROCESS_RESTARTS_KEY).items()):
        host, _, process = field.decode().rpartition("/")
        restarts.add_metric([host, process], int(count))
    yield from (up, age, restarts)


def alert_families(sources: Sources) -> Iterator[Metric]:
    """Open alerts per condition (every condition, 0 when none), and one series per open alert."""
    per_condition = GaugeMetricFamily("bullrq_alerts_open", "Open alerts per condition.", labels=["condition"])
    for condition, count in alert_store.open_counts(sources.db).items():
        per_condition.add_metric([condition], count)
    each = GaugeMetricFamily("bullrq_alert_open", "1 for each open alert, by its key (condition and subject).",
                             labels=["key", "condition"])
    for row in sources.db.execute("SELECT key, condition FROM alerts WHERE status = 'open' ORDER BY key"):
        each.add_metric([row["key"], row["condition"]], 1)
    yield from (per_condition, each)


#: every family /metrics exposes, in this order
FAMILIES: list[Callable[[Sources], Iterator[Metric]]] = [queue_families, job_families, duration_family,
                                                          redis_families, scheduler_families, alert_families]


class ScrapeCollector:
    """A prometheus_client collector that reads `Sources` when the registry is scraped."""

    def __init__(self, redis, db):
        self.redis = redis
        self.db = db

    def collect(self) -> Iterator[Metric]:
        sources = Sources(self.redis, self.db)
        for family in FAMILIES:
            yield from family(sources)


@bp.get("/metrics")
def metrics():
    """Prometheus text exposition of queues, jobs, Redis, the scheduler, restarts and open alerts."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ScrapeCollector(current_app.extensions["bullrq.redis"], get_db()))
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_PLAIN_0_0_4)
