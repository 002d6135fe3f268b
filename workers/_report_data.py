"""The figures of an executive report: the job system over a period (from the hourly rollup of `job_runs`) and
the synced data (`sync_items`, `sync_runs`).

Job figures read the rollup (`app.store.rollup`), never the millions of rows of `job_runs`, except the short list of the
most frequent errors, read through the (status, started_at) index. The rollup counts whole hours, so a period
starts on the hour (`period_bounds`); it ends at the moment the report is built.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg

from app.store import rollup

#: rows in the failing-task and error listings
TOP = 10
#: workspaces listed one by one (the totals count them all)
MAX_WORKSPACES = 50
#: characters kept of an error message
MAX_MESSAGE = 200


def period_bounds(end: datetime, days: float) -> tuple[datetime, datetime]:
    """The period [start, end) of a report of `days` ending at `end`: start is the hour `days` before `end`."""
    end = end.astimezone(UTC)
    start = (end - timedelta(days=days)).replace(minute=0, second=0, microsecond=0)
    return start, end


def _rate(failed: int, total: int) -> float:
    return round(failed / total, 4) if total else 0.0


def _ms(value: float | None) -> float | None:
    return round(value, 1) if value is not None else None


def job_figures(conn: psycopg.Connection, start: datetime, end: datetime) -> dict:
    """Finished attempts in [start, end): totals, per queue (busiest first), the tasks with most failures and the
    most frequent errors."""
    window = {"start": start, "end": end}
    queues = conn.execute(
        "SELECT queue, sum(total)::bigint AS runs, sum(completed)::bigint AS completed, sum(failed)::bigint AS failed,"
        " sum(duration_ms) AS duration_ms FROM job_runs_hourly WHERE hour >= %(start)s AND hour < %(end)s "
        "GROUP BY queue", window,
    ).fetchall()  # fmt: skip
    histograms: dict[str, dict[int, int]] = {}
    for row in conn.execute(
        "SELECT queue, bucket, sum(runs)::bigint AS runs FROM job_runs_hourly_buckets "
        "WHERE hour >= %(start)s AND hour < %(end)s GROUP BY queue, bucket", window,
    ):  # fmt: skip
        histograms.setdefault(row["queue"], {})[row["bucket"]] = row["runs"]
    per_queue = [_queue_row(row, histograms.get(row["queue"], {})) for row in queues]
    per_queue.sort(key=lambda row: (-row["runs"], row["queue"]))
    runs = sum(row["runs"] for row in per_queue)
    failed = sum(row["failed"] for row in per_queue)
    return {
        "runs": runs,
        "completed": sum(row["completed"] for row in per_queue),
        "failed": failed,
        "failure_rate": _rate(failed, runs),
        "queues": per_queue,
        "failing_tasks": _failing_tasks(conn, window),
        "errors": _errors(conn, window),
    }


def _queue_row(row: dict, histogram: dict[int, int]) -> dict:
    return {
        "queue": row["queue"],
        "runs": row["runs"],
        "completed": row["completed"],
        "failed": row["failed"],
        "failure_rate": _rate(row["failed"], row["runs"]),
        "p50_ms": _ms(rollup.percentile(histogram, 0.5)),
        "p95_ms": _ms(rollup.percentile(histogram, 0.95)),
        "mean_ms": _ms(row["duration_ms"] / row["completed"]) if row["completed"] else None,
    }


def _failing_tasks(conn: psycopg.Connection, window: dict) -> list[dict]:
    rows = conn.execute(
        "SELECT queue, task, sum(total)::bigint AS runs, sum(failed)::bigint AS failed FROM job_runs_hourly "
        "WHERE hour >= %(start)s AND hour < %(end)s GROUP BY queue, task HAVING sum(failed) > 0 "
        "ORDER BY failed DESC, runs DESC, queue, task LIMIT %(top)s", {**window, "top": TOP},
    ).fetchall()  # fmt: skip
    return [{**row, "failure_rate": _rate(row["failed"], row["runs"])} for row in rows]


def _errors(conn: psycopg.Connection, window: dict) -> list[dict]:
    rows = conn.execute(
        "SELECT queue, task, coalesce(error_type, '') AS error_type, count(*) AS count, max(started_at) AS last_at, "
        "(array_agg(error_message ORDER BY started_at DESC))[1] AS last_message FROM job_runs "
        "WHERE status = ANY(%(failed)s) AND started_at >= %(start)s AND started_at < %(end)s "
        "GROUP BY 1, 2, 3 ORDER BY count DESC, last_at DESC, queue, task LIMIT %(top)s",
        {**window, "failed": list(rollup.FAILED), "top": TOP},
    ).fetchall()
    return [
        {**row, "last_at": row["last_at"].isoformat(), "last_message": (row["last_message"] or "")[:MAX_MESSAGE]}
        for row in rows
    ]


def sync_figures(conn: psycopg.Connection, start: datetime, end: datetime) -> dict:
    """Synced data: items tracked per workspace (new and changed in [start, end), with errors) and the sync runs
    that ended in the period; workspaces with most changes first.

    `new` counts the items added in the period that hold synced data: an item tracked but never fetched is not new
    data. It is the only "new" figure (the sync runs' own new counts would count the same items a second way).
    """
    window = {"start": start, "end": end}
    workspaces: dict[str, dict] = {}
    for row in conn.execute(
        "SELECT workspace_id, count(*) AS items, "
        "count(*) FILTER (WHERE changed_at >= %(start)s AND changed_at < %(end)s) AS changed, "
        "count(*) FILTER (WHERE created_at >= %(start)s AND created_at < %(end)s AND data IS NOT NULL) AS new, "
        "count(*) FILTER (WHERE last_error IS NOT NULL) AS with_errors FROM sync_items GROUP BY workspace_id",
        window,
    ):
        workspaces[row["workspace_id"]] = {**_EMPTY_WORKSPACE, **row}
    for row in conn.execute(
        "SELECT workspace_id, count(*) AS runs, sum(updated_count)::bigint AS updated_count, "
        "sum(unchanged_count)::bigint AS unchanged_count, "
        "sum(failed_count)::bigint AS failed_count FROM sync_runs "
        "WHERE ended_at >= %(start)s AND ended_at < %(end)s GROUP BY workspace_id",
        window,
    ):
        workspaces.setdefault(row["workspace_id"], {**_EMPTY_WORKSPACE, "workspace_id": row["workspace_id"]})
        workspaces[row["workspace_id"]].update(row)
    ordered = sorted(workspaces.values(), key=lambda w: (-w["changed"], -w["items"], w["workspace_id"]))
    totals = {name: sum(w[name] for w in ordered) for name in _SUMMED}
    return {"workspaces_total": len(ordered), **totals, "workspaces": ordered[:MAX_WORKSPACES]}


_SUMMED = ("items", "changed", "new", "with_errors", "runs", "updated_count", "unchanged_count", "failed_count")
_EMPTY_WORKSPACE = dict.fromkeys(_SUMMED, 0)


def summary(conn: psycopg.Connection, start: datetime, end: datetime, days: float, sections=None) -> dict:
    """Every figure of the report as JSON-safe values; `sections(name)` is called after each section is read."""
    jobs = job_figures(conn, start, end)
    if sections:
        sections("job history")
    sync = sync_figures(conn, start, end)
    if sections:
        sections("synced data")
    return {
        "period": {"start": start.isoformat(), "end": end.isoformat(), "days": days},
        "jobs": jobs,
        "sync": sync,
    }
