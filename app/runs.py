"""Queries over the run history (`job_runs`) for the API, the pages and the CLI.

Every query is bounded: lists are paginated, aggregates read a time window through the (queue, started_at) and
(started_at) indexes. Times are `started_at`: when the attempt began (for a job canceled before it ran, when
it was canceled).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql

#: most rows one page may hold
MAX_LIMIT = 100
STATUSES = ("started", "completed", "failed", "retried", "canceled", "abandoned", "timed_out", "skipped")
FAILED_STATUSES = ("failed", "timed_out", "abandoned")

_LIST_COLUMNS = (
    "id, job_id, attempt, queue, task, schedule_id, worker, status, enqueued_at, started_at, ended_at, "
    "duration_ms, items_processed, items_failed, error_type, error_message, result, metadata"
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


def _window(since: datetime | None, hours: float) -> datetime:
    return since or datetime.now(UTC) - timedelta(hours=hours)


def throughput_per_hour(conn: psycopg.Connection, queue: str | None = None, hours: float = 24) -> list[dict]:
    """Runs ended per hour and queue over the last `hours`: completed, failed (incl. timed out, abandoned), all."""
    condition, params = RunFilter(queue=queue, since=_window(None, hours)).where()
    query = sql.SQL(
        """
        SELECT date_trunc('hour', started_at) AS hour, queue,
               count(*) FILTER (WHERE status = 'completed') AS completed,
               count(*) FILTER (WHERE status = ANY(%s)) AS failed,
               count(*) AS total
        FROM job_runs WHERE {} AND status <> 'started'
        GROUP BY 1, 2 ORDER BY 1, 2
        """
    ).format(condition)
    return conn.execute(query, [list(FAILED_STATUSES), *params]).fetchall()


def failure_rate(conn: psycopg.Connection, queue: str | None = None, hours: float = 24) -> list[dict]:
    """Per queue over the last `hours`: finished runs, failed runs, and their ratio."""
    condition, params = RunFilter(queue=queue, since=_window(None, hours)).where()
    query = sql.SQL(
        """
        SELECT queue, count(*) AS total, count(*) FILTER (WHERE status = ANY(%s)) AS failed,
               round(count(*) FILTER (WHERE status = ANY(%s))::numeric / greatest(count(*), 1), 4) AS rate
        FROM job_runs WHERE {} AND status <> 'started' GROUP BY queue ORDER BY queue
        """
    ).format(condition)
    return conn.execute(query, [list(FAILED_STATUSES), list(FAILED_STATUSES), *params]).fetchall()


def duration_percentiles(conn: psycopg.Connection, queue: str | None = None, hours: float = 24) -> list[dict]:
    """Per queue over the last `hours`: p50, p95 and p99 of completed runs' durations, in milliseconds."""
    condition, params = RunFilter(queue=queue, status="completed", since=_window(None, hours)).where()
    query = sql.SQL(
        """
        SELECT queue, count(*) AS runs,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) AS p50,
               percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95,
               percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_ms) AS p99
        FROM job_runs WHERE {} GROUP BY queue ORDER BY queue
        """
    ).format(condition)
    return conn.execute(query, params).fetchall()


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
