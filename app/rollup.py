"""Hourly rollup of finished runs (`job_runs_hourly`): counts and a duration histogram per hour, queue and task.

Windows of hours or days read the rollup, never the millions of rows of `job_runs`. Percentiles come from the
histogram: buckets grow by 2^(1/8) (9 %), from 0.1 ms to over a month; the value reported is interpolated inside
its bucket, so it is within 9 % of the exact one.
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import datetime

import psycopg

#: bucket i holds durations in [BASE * GROWTH**(i-1), BASE * GROWTH**i) ms; bucket 0 holds those below BASE
BASE = 0.1
GROWTH = 2 ** 0.125
BUCKETS = 280  # the last bucket ends past 30 days
#: statuses that end an attempt (a skipped slot never ran: it is not counted)
FINAL = ("completed", "failed", "retried", "canceled", "abandoned", "timed_out")
FAILED = ("failed", "timed_out", "abandoned")


def bucket_of(duration_ms: float) -> int:
    if duration_ms < BASE:
        return 0
    return min(BUCKETS - 1, 1 + int(math.log(duration_ms / BASE, GROWTH)))


def _bounds(index: int) -> tuple[float, float]:
    if index == 0:
        return 0.0, BASE
    return BASE * GROWTH ** (index - 1), BASE * GROWTH**index


def percentile(buckets: list[int], fraction: float) -> float | None:
    """The `fraction` quantile (0..1) of a histogram, interpolated inside its bucket."""
    total = sum(buckets)
    if not total:
        return None
    rank = fraction * total
    seen = 0
    for index, count in enumerate(buckets):
        if count and seen + count >= rank:
            low, high = _bounds(index)
            return low + (high - low) * max(0.0, rank - seen) / count
        seen += count
    return _bounds(BUCKETS - 1)[1]


def add_finished(conn: psycopg.Connection, runs: list[dict]) -> None:
    """Count runs that just reached a final status (each once: the caller passes only transitions)."""
    totals: dict[tuple, dict] = defaultdict(lambda: {"completed": 0, "failed": 0, "total": 0, "duration_ms": 0.0,
                                                    "buckets": [0] * BUCKETS})
    for run in runs:
        if run["status"] not in FINAL or run["started_at"] is None:
            continue
        started: datetime = run["started_at"]
        entry = totals[(started.replace(minute=0, second=0, microsecond=0), run["queue"], run["task"])]
        entry["total"] += 1
        if run["status"] == "completed":
            entry["completed"] += 1
            duration = run["duration_ms"] or 0.0
            entry["duration_ms"] += duration
            entry["buckets"][bucket_of(duration)] += 1
        elif run["status"] in FAILED:
            entry["failed"] += 1
    if not totals:
        return
    with conn.cursor() as cursor:
        cursor.executemany(
            """
            INSERT INTO job_runs_hourly (hour, queue, task, completed, failed, total, duration_ms, buckets)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (hour, queue, task) DO UPDATE SET
                completed = job_runs_hourly.completed + EXCLUDED.completed,
                failed = job_runs_hourly.failed + EXCLUDED.failed,
                total = job_runs_hourly.total + EXCLUDED.total,
                duration_ms = job_runs_hourly.duration_ms + EXCLUDED.duration_ms,
                buckets = ARRAY(SELECT a + b FROM unnest(job_runs_hourly.buckets, EXCLUDED.buckets) AS t(a, b))
            """,
            [(hour, queue, task, e["completed"], e["failed"], e["total"], e["duration_ms"], e["buckets"])
             for (hour, queue, task), e in totals.items()],
        )


_REBUILD_TOTALS = f"""
SELECT date_trunc('hour', started_at) AS hour, queue, task,
       count(*) FILTER (WHERE status = 'completed') AS completed,
       count(*) FILTER (WHERE status IN {FAILED}) AS failed,
       count(*) AS total,
       coalesce(sum(duration_ms) FILTER (WHERE status = 'completed'), 0) AS duration_ms
FROM job_runs WHERE status IN {FINAL} AND started_at IS NOT NULL GROUP BY 1, 2, 3
"""
_REBUILD_BUCKETS = f"""
SELECT date_trunc('hour', started_at) AS hour, queue, task,
       CASE WHEN coalesce(duration_ms, 0) < {BASE} THEN 0
            ELSE least({BUCKETS - 1}, 1 + floor(ln(duration_ms / {BASE}) / ln({GROWTH})))::int END AS bucket,
       count(*) AS n
FROM job_runs WHERE status = 'completed' AND started_at IS NOT NULL GROUP BY 1, 2, 3, 4
"""


def rebuild(conn: psycopg.Connection) -> int:
    """Recompute the whole rollup from job_runs (after rows were loaded by other means). Returns its row count."""
    with conn.transaction():
        histograms: dict[tuple, list[int]] = defaultdict(lambda: [0] * BUCKETS)
        for row in conn.execute(_REBUILD_BUCKETS):
            histograms[(row["hour"], row["queue"], row["task"])][row["bucket"]] = row["n"]
        totals = conn.execute(_REBUILD_TOTALS).fetchall()
        conn.execute("TRUNCATE job_runs_hourly")
        with conn.cursor().copy(
            "COPY job_runs_hourly (hour, queue, task, completed, failed, total, duration_ms, buckets) FROM STDIN"
        ) as copy:
            for row in totals:
                key = (row["hour"], row["queue"], row["task"])
                copy.write_row((*key, row["completed"], row["failed"], row["total"], row["duration_ms"],
                                histograms.get(key, [0] * BUCKETS)))
    conn.execute("ANALYZE job_runs_hourly")
    return len(totals)
