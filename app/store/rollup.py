"""Hourly rollup of finished attempts: counts (`job_runs_hourly`) and a duration histogram
(`job_runs_hourly_buckets`) per hour, queue and task, kept in SQL by the history writer.

Windows of hours or days read the rollup, never the millions of rows of `job_runs`. Percentiles come from the
histogram: buckets grow by 2^(1/8) (9 %), from 0.1 ms to over a month; the value reported is interpolated inside
its bucket, so it is within 9 % of the exact one.
"""

from __future__ import annotations

import psycopg

#: bucket i holds durations in [BASE * GROWTH**(i-1), BASE * GROWTH**i) ms; bucket 0 holds those below BASE
BASE = 0.1
GROWTH = 2**0.125
BUCKETS = 280  # the last bucket ends past 30 days
#: statuses that end an attempt (a skipped slot never ran: it is not counted)
FINAL = ("completed", "failed", "retried", "canceled", "abandoned", "timed_out")
FAILED = ("failed", "timed_out", "abandoned")

BUCKET_SQL = (
    f"CASE WHEN coalesce(duration_ms, 0) < {BASE} THEN 0 "
    f"ELSE least({BUCKETS - 1}, 1 + floor(ln(duration_ms / {BASE}) / ln({GROWTH})))::int END"
)


def add_sql(source: str) -> list[str]:
    """Statements adding the attempts of `source` (a table or subquery with queue, task, status, started_at and
    duration_ms, each attempt reaching its final status once) to the rollup."""
    return [
        f"""
        INSERT INTO job_runs_hourly (hour, queue, task, completed, failed, total, duration_ms)
        SELECT date_trunc('hour', started_at), queue, task,
               count(*) FILTER (WHERE status = 'completed'), count(*) FILTER (WHERE status IN {FAILED}), count(*),
               coalesce(sum(duration_ms) FILTER (WHERE status = 'completed'), 0)
        FROM {source} AS s WHERE status IN {FINAL} AND started_at IS NOT NULL GROUP BY 1, 2, 3
        ON CONFLICT (hour, queue, task) DO UPDATE SET
            completed = job_runs_hourly.completed + EXCLUDED.completed,
            failed = job_runs_hourly.failed + EXCLUDED.failed,
            total = job_runs_hourly.total + EXCLUDED.total,
            duration_ms = job_runs_hourly.duration_ms + EXCLUDED.duration_ms
        """,
        f"""
        INSERT INTO job_runs_hourly_buckets (hour, queue, task, bucket, runs)
        SELECT date_trunc('hour', started_at), queue, task, {BUCKET_SQL}, count(*)
        FROM {source} AS s WHERE status = 'completed' AND started_at IS NOT NULL GROUP BY 1, 2, 3, 4
        ON CONFLICT (hour, queue, task, bucket) DO UPDATE SET runs = job_runs_hourly_buckets.runs + EXCLUDED.runs
        """,
    ]


def _bounds(index: int) -> tuple[float, float]:
    if index == 0:
        return 0.0, BASE
    return BASE * GROWTH ** (index - 1), BASE * GROWTH**index


def upper_bound(index: int) -> float:
    """The upper end of bucket `index`, in milliseconds."""
    return _bounds(index)[1]


def percentile(buckets: dict[int, int], fraction: float) -> float | None:
    """The `fraction` quantile (0..1) of a histogram {bucket: runs}, interpolated inside its bucket."""
    total = sum(buckets.values())
    if not total:
        return None
    rank = fraction * total
    seen = 0
    for index in sorted(buckets):
        count = buckets[index]
        if count and seen + count >= rank:
            low, high = _bounds(index)
            return low + (high - low) * max(0.0, rank - seen) / count
        seen += count
    return _bounds(max(buckets))[1]


def rebuild(conn: psycopg.Connection) -> int:
    """Recompute the whole rollup from job_runs (after rows were loaded by other means). Returns its row count."""
    with conn.transaction():
        conn.execute("TRUNCATE job_runs_hourly, job_runs_hourly_buckets")
        for statement in add_sql("job_runs"):
            conn.execute(statement)
    conn.execute("ANALYZE job_runs_hourly")
    conn.execute("ANALYZE job_runs_hourly_buckets")
    return conn.execute("SELECT count(*) AS n FROM job_runs_hourly").fetchone()["n"]
