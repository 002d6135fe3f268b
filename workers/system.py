"""Built-in tasks that every queue accepts."""

from __future__ import annotations

import time
from typing import Any

from app.errors import InvalidJobError
from app.tasks import task

#: seconds: the longest sleep system.ping accepts
MAX_PING_SLEEP = 60


def _validate_ping(kwargs: dict) -> None:
    sleep = kwargs.get("sleep", 0)
    if isinstance(sleep, bool) or not isinstance(sleep, int | float) or not 0 <= sleep <= MAX_PING_SLEEP:
        raise InvalidJobError(f"system.ping: sleep must be a number of seconds from 0 to {MAX_PING_SLEEP}")


@task("system.ping", queue=None, validate=_validate_ping)
def ping(sleep: float = 0, echo: Any = None) -> Any:
    """Sleep `sleep` seconds, then return `echo`: for health checks, smoke tests and benchmarks."""
    if sleep:
        time.sleep(sleep)
    return echo


@task("system.retention_cleanup", queue="cache-cleanup")
def retention_cleanup(run_days: float | None = None, job_days: float | None = None) -> dict:
    """Delete history rows and ended jobs past their retention (defaults from the settings: 60 and 30 days)."""
    from app.config import load_settings
    from app.connections import get_redis
    from app.runtime import control, progress
    from app.store.db import connect
    from app.store.runs import delete_older_than
    from queues import queue_names

    settings = load_settings()
    with connect(settings.database_url, autocommit=True) as conn:
        runs = delete_older_than(conn, run_days or settings.run_retention_days)
    progress.report(percent=50, message="history rows deleted", processed=runs)
    grace = (job_days or settings.job_retention_days) * 86400
    redis = get_redis(settings)
    jobs = sum(control.clean(redis, queue, state, grace) for queue in queue_names() for state in control.CLEANABLE)
    progress.report(percent=100, message="done", processed=runs + jobs)
    return {"runs_deleted": runs, "jobs_deleted": jobs}


def _validate_weeks(kwargs: dict) -> None:
    weeks = kwargs.get("weeks", 2)
    if isinstance(weeks, bool) or not isinstance(weeks, int) or not 1 <= weeks <= 520:
        raise InvalidJobError("system.update_stats: weeks must be a whole number from 1 to 520")


@task("system.update_stats", queue="reports", validate=_validate_weeks)
def update_stats(weeks: int = 2) -> dict:
    """Recompute the weekly figures per queue and task (table job_stats_weekly) for the last `weeks` weeks."""
    from app.runtime import progress, resources
    from app.store.runs import refresh_weekly_stats

    with resources.database() as conn:
        rows = refresh_weekly_stats(conn, weeks)
    progress.report(percent=100, message="weekly stats written", processed=len(rows))
    return {"rows": len(rows), "runs": sum(r["runs"] for r in rows), "failed": sum(r["failed"] for r in rows)}
