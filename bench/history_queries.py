"""Time the run-history queries on a large `job_runs` table (10 million rows by default).

    python -m bench.history_queries [--rows N] [--database-url URL]

Creates (once) a database `bullrq_history_bench` next to DATABASE_URL's, fills it with N synthetic runs spread
over 60 days (7 queues, ~5 % failures with error messages), then prints each query's median time over 5 runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import psycopg

from app.store import rollup, runs
from app.store.db import connect
from app.store.migrate import apply_migrations

BENCH_DB = "bullrq_history_bench"
QUEUES = ("sync", "reports", "cache-cleanup", "documents", "notifications", "harvest", "embeddings")

_FILL = """
INSERT INTO job_runs (job_id, attempt, queue, task, schedule_id, worker, status, enqueued_at, started_at, ended_at,
                      duration_ms, items_processed, error_type, error_message)
SELECT md5(i::text), 1 + (i %% 3 = 0)::int,
       (%(queues)s::text[])[1 + i %% 7],
       (%(queues)s::text[])[1 + i %% 7] || '.task' || (i %% 4),
       CASE WHEN i %% 10 = 0 THEN 'schedule-' || (i %% 8) END,
       'worker-' || (i %% 14),
       CASE WHEN i %% 20 = 0 THEN 'failed' WHEN i %% 97 = 0 THEN 'retried' WHEN i %% 211 = 0 THEN 'timed_out'
            WHEN i %% 401 = 0 THEN 'canceled' ELSE 'completed' END,
       t - interval '10 ms', t, t + (i %% 5000) * interval '1 ms',
       (i %% 5000)::float, i %% 50,
       CASE WHEN i %% 20 = 0 THEN 'HTTPError' END,
       CASE WHEN i %% 20 = 0 THEN 'provider answered 503 for record ' || (i %% 100000) END
FROM (SELECT i, now() - (i * %(spacing)s) * interval '1 second' AS t
      FROM generate_series(%(start)s, %(stop)s) AS i) AS g
"""


def _bench_url(url: str) -> str:
    base = url.rsplit("/", 1)[0]
    with psycopg.connect(url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (BENCH_DB,)).fetchone():
            conn.execute(f'CREATE DATABASE "{BENCH_DB}"')
    return f"{base}/{BENCH_DB}"


def fill(url: str, rows: int) -> None:
    apply_migrations(url)
    with connect(url, autocommit=True) as conn:
        have = conn.execute("SELECT count(*) AS n FROM job_runs").fetchone()["n"]
        if have == rows and conn.execute("SELECT 1 FROM job_runs_hourly LIMIT 1").fetchone():
            print(f"job_runs already holds {rows:,} rows")
            return
        conn.execute("TRUNCATE job_runs")
        spacing = 60 * 86400 / rows  # seconds between runs: N rows over 60 days
        started = time.perf_counter()
        chunk = 1_000_000
        for start in range(1, rows + 1, chunk):
            stop = min(rows, start + chunk - 1)
            conn.execute(_FILL, {"queues": list(QUEUES), "spacing": spacing, "start": start, "stop": stop})
            print(f"  {stop:,} rows ({time.perf_counter() - started:.0f} s)", flush=True)
        conn.execute("VACUUM ANALYZE job_runs")
        print(f"rollup rebuilt: {rollup.rebuild(conn):,} hourly rows ({time.perf_counter() - started:.0f} s)")
        print(f"filled {rows:,} rows in {time.perf_counter() - started:.0f} s")


def timed(conn, call, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call(conn)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


QUERIES = {
    "runs, newest page": lambda c: runs.list_runs(c),
    "runs of a queue": lambda c: runs.list_runs(c, runs.RunFilter(queue="reports")),
    "runs of a task, page 5": lambda c: runs.list_runs(c, runs.RunFilter(task="sync.task1"), offset=200),
    "failed runs": lambda c: runs.list_runs(c, runs.RunFilter(status="failed")),
    "runs of a schedule": lambda c: runs.list_runs(c, runs.RunFilter(schedule_id="schedule-3")),
    "runs in a past hour": lambda c: runs.list_runs(
        c, runs.RunFilter(since=_ago(72), until=_ago(71))
    ),
    "error text search": lambda c: runs.list_runs(c, runs.RunFilter(error_text="record 4242")),
    "a job's runs": lambda c: runs.list_runs(c, runs.RunFilter(job_id="c4ca4238a0b923820dcc509a6f75849b")),
    "throughput/hour, 24 h": lambda c: runs.throughput_per_hour(c),
    "throughput/hour, 1 queue": lambda c: runs.throughput_per_hour(c, queue="sync"),
    "failure rate, 24 h": lambda c: runs.failure_rate(c),
    "p50/p95/p99, 24 h": lambda c: runs.duration_percentiles(c),
    "p50/p95/p99, 1 queue": lambda c: runs.duration_percentiles(c, queue="harvest"),
}


def _ago(hours: float):
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) - timedelta(hours=hours)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    args = parser.parse_args()
    if not args.database_url:
        parser.error("set DATABASE_URL or pass --database-url")
    url = _bench_url(args.database_url)
    fill(url, args.rows)
    with connect(url, autocommit=True) as conn:
        print(f"\n{'query on ' + format(args.rows, ',') + ' runs':<34} {'median ms':>10}")
        for name, call in QUERIES.items():
            print(f"{name:<34} {timed(conn, call):>10.1f}")


if __name__ == "__main__":
    main()
