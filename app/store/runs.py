"""Queries over the run history (`job_runs`) for the API, the pages and the CLI.

Every query is bounded: lists are paginated and read through the indexes of `job_runs`; aggregates over a
window read the hourly rollup (`app.store.rollup`). Times are `started_at`: when the attempt began (for a job canceled
before it ran, when it was canceled).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql

from app.store import rollup

#: most rows one page may hold
MAX_LIMIT = 100
STATUSES = ("started", "completed", "failed", "retried", "canceled", "abandoned", "timed_out", "skipped")

_LIST_COLUMNS = (
    "id, job_id, attempt, queue, task, schedule_id, trigger, schedule_slot, worker, status, enqueued_at, "
    "started_at, ended_at, duration_ms, items_processed, items_failed, error_type, error_message, result, metadata"
)


@dataclass(frozen=True)
class RunFilter:
    """What `list_runs` selects; None means "any"."""

    queue: str | None = None
    task: str | None = None
    status: str | None = None
    schedule_id: str | None = None
    job_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    error_text: str | None = None  #: case-insensitive substring of the error message
    name: str | None = None  #: a task type or a schedule id (the API's `jobName`)

    def where(self) -> tuple[sql.Composable, list]:
        clauses, params = [], []
        for column in ("queue", "task", "status", "schedule_id", "job_id"):
            value = getattr(self, column)
            if value is not None:
                clauses.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
                params.append(value)
        if self.since is not None:
            clauses.append(sql.SQL("started_at >= %s"))
            params.append(self.since)
        if self.until is not None:
            clauses.append(sql.SQL("started_at < %s"))
            params.append(self.until)
        if self.name is not None:
            clauses.append(sql.SQL("(task = %s OR schedule_id = %s)"))
            params += [self.name, self.name]
        if self.error_text:
            clauses.append(sql.SQL("error_message ILIKE %s"))
            params.append("%" + self.error_text.replace("\\", "\\\\").replace("%", r"\%").replace("_", r"\_") + "%")
        if not clauses:
            return sql.SQL("TRUE"), params
        return sql.SQL(" AND ").join(clauses), params


def list_runs(conn: psycopg.Connection, where: RunFilter = RunFilter(), limit: int = 50, offset: int = 0) -> dict:
    """One page of runs, newest first: `{"runs": [...], "limit", "offset", "has_more"}`."""
    limit = max(1, min(limit, MAX_LIMIT))
    condition, params = where.where()
    query = sql.SQL(
        "SELECT " + _LIST_COLUMNS + " FROM job_runs WHERE {} ORDER BY started_at DESC, id DESC "
        "LIMIT %s OFFSET %s"
    ).format(condition)
    rows = conn.execute(query, [*params, limit + 1, max(0, offset)]).fetchall()
    return {"runs": rows[:limit], "limit": limit, "offset": offset, "has_more": len(rows) > limit}


def latest_run(conn: psycopg.Connection, where: RunFilter) -> dict | None:
    page = list_runs(conn, where, limit=1)
    return page["runs"][0] if page["runs"] else None


def _since(hours: float) -> datetime:
    """The start of the hour `hours` ago: rollup windows are whole hours."""
    return (datetime.now(UTC) - timedelta(hours=hours)).replace(minute=0, second=0, microsecond=0)


def _rollup(conn: psycopg.Connection, select: str, queue: str | None, hours: float, group: str) -> list[dict]:
    where = "hour >= %s" + (" AND queue = %s" if queue else "")
    params = [_since(hours)] + ([queue] if queue else [])
    return conn.execute(f"SELECT {select} FROM job_runs_hourly WHERE {where} GROUP BY {group} ORDER BY {group}",
                        params).fetchall()


def throughput_per_hour(conn: psycopg.Connection, queue: str | None = None, hours: float = 24) -> list[dict]:
    """Finished attempts per hour and queue over the last `hours`: completed, failed (incl. timed out and
    abandoned) and all of them."""
    return _rollup(
        conn, "hour, queue, sum(completed)::bigint AS completed, sum(failed)::bigint AS failed, "
        "sum(total)::bigint AS total",
        queue, hours, "hour, queue",
    )  # fmt: skip


def failure_rate(conn: psycopg.Connection, queue: str | None = None, hours: float = 24) -> list[dict]:
    """Per queue over the last `hours`: finished attempts, failed ones, and their ratio."""
    rows = _rollup(conn, "queue, sum(total)::bigint AS total, sum(failed)::bigint AS failed", queue, hours, "queue")
    return [{**row, "rate": round(row["failed"] / row["total"], 4) if row["total"] else 0.0} for row in rows]


def duration_percentiles(conn: psycopg.Connection, queue: str | None = None, hours: float = 24) -> list[dict]:
    """Per queue over the last `hours`: p50, p95 and p99 of completed runs' durations in milliseconds (from the
    rollup's histogram, within 9 % of the exact values), and their mean."""
    totals = {r["queue"]: r for r in _rollup(conn, "queue, sum(completed)::bigint AS runs, sum(duration_ms) AS ms",
                                             queue, hours, "queue")}
    where = "hour >= %s" + (" AND queue = %s" if queue else "")
    histograms: dict[str, dict[int, int]] = {}
    for row in conn.execute(
        f"SELECT queue, bucket, sum(runs)::bigint AS runs FROM job_runs_hourly_buckets WHERE {where} "
        "GROUP BY queue, bucket",
        [_since(hours)] + ([queue] if queue else []),
    ):
        histograms.setdefault(row["queue"], {})[row["bucket"]] = row["runs"]
    return [
        {
            "queue": name,
            "runs": row["runs"],
            "mean": row["ms"] / row["runs"] if row["runs"] else None,
            **{f"p{q}": rollup.percentile(histograms.get(name, {}), q / 100) for q in (50, 95, 99)},
        }
        for name, row in sorted(totals.items())
    ]


def delete_older_than(conn: psycopg.Connection, days: float, batch: int = 5000) -> int:
    """Delete runs that began more than `days` ago, `batch` rows per statement (short locks). Returns how many."""
    cutoff = datetime.now(UTC) - timedelta(days=days)
    deleted = 0
    while True:
        with conn.transaction():
            count = conn.execute(
                "DELETE FROM job_runs WHERE id IN (SELECT id FROM job_runs WHERE started_at < %s LIMIT %s)",
                (cutoff, batch),
            ).rowcount
        deleted += count
        if count < batch:
            return deleted


def week_start(moment: datetime) -> datetime:
    """Monday 00:00 UTC of the ISO week holding `moment`."""
    day = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day - timedelta(days=day.weekday())


def refresh_weekly_stats(conn: psycopg.Connection, weeks: int = 2, now: datetime | None = None) -> list[dict]:
    """Recompute `job_stats_weekly` for the last `weeks` ISO weeks (the current one included) from the rollup:
    finished attempts, failures, p50 and p95 per queue and task. Returns the rows written."""
    first = week_start(now or datetime.now(UTC)) - timedelta(weeks=weeks - 1)
    totals = conn.execute(
        "SELECT date_trunc('week', hour AT TIME ZONE 'UTC')::date AS week, queue, task, sum(total)::bigint AS runs, "
        "sum(failed)::bigint AS failed FROM job_runs_hourly WHERE hour >= %s GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        [first],
    ).fetchall()
    histograms: dict[tuple, dict[int, int]] = {}
    for row in conn.execute(
        "SELECT date_trunc('week', hour AT TIME ZONE 'UTC')::date AS week, queue, task, bucket, "
        "sum(runs)::bigint AS runs FROM job_runs_hourly_buckets WHERE hour >= %s GROUP BY 1, 2, 3, 4",
        [first],
    ):
        histograms.setdefault((row["week"], row["queue"], row["task"]), {})[row["bucket"]] = row["runs"]
    rows = []
    for row in totals:
        histogram = histograms.get((row["week"], row["queue"], row["task"]), {})
        rows.append({**row, "p50_ms": rollup.percentile(histogram, 0.5), "p95_ms": rollup.percentile(histogram, 0.95)})
    with conn.transaction():
        conn.execute("DELETE FROM job_stats_weekly WHERE week_start >= %s", [first.date()])
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO job_stats_weekly (week_start, queue, task, runs, failed, p50_ms, p95_ms) "
                "VALUES (%(week)s, %(queue)s, %(task)s, %(runs)s, %(failed)s, %(p50_ms)s, %(p95_ms)s)",
                rows,
            )
    return rows
