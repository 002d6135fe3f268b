"""The built-in tasks of workers/system.py run by a real worker: system.update_stats."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.errors import InvalidJobError
from app.store.history import write_rows
from app.store.rows import run_row
from app.store.runs import week_start

pytest_plugins = ["tests.worker_processes", "tests.handler_runs"]


def _seed(conn, job_id: str, task: str, status: str, started: datetime, ms: float) -> None:
    stamp = started.timestamp()
    write_rows(conn, [run_row(job_id=job_id, attempt=1, queue="harvest", task=task, status=status,
                              started_at=stamp, ended_at=stamp + ms / 1000)])


def test_update_stats_writes_the_weekly_figures_per_queue_and_task(handlers):
    this_week = week_start(datetime.now(UTC)) + timedelta(hours=1)
    last_week = this_week - timedelta(weeks=1)
    long_ago = this_week - timedelta(weeks=5)
    with handlers.db() as conn:
        for n in range(20):
            _seed(conn, f"now-{n}", "harvest.run", "completed", this_week, 100 + n)  # 100..119 ms
        _seed(conn, "now-f", "harvest.run", "failed", this_week, 5)
        for n in range(4):
            _seed(conn, f"last-{n}", "harvest.source", "completed", last_week, 1000)
        _seed(conn, "old", "harvest.run", "completed", long_ago, 10)  # outside the two weeks asked for

    handlers.start("reports")
    job = handlers.run("system.update_stats", {"weeks": 2})
    assert job["status"] == "completed", job["error"]

    with handlers.db() as conn:
        rows = conn.execute(
            "SELECT week_start, task, runs, failed, p50_ms, p95_ms FROM job_stats_weekly WHERE queue = 'harvest' "
            "ORDER BY week_start, task"
        ).fetchall()
    assert [(r["week_start"], r["task"], r["runs"], r["failed"]) for r in rows] == [
        (last_week.date(), "harvest.source", 4, 0),
        (this_week.date(), "harvest.run", 21, 1),
    ]
    current = rows[1]
    assert 100 <= current["p50_ms"] * 1.1 and current["p50_ms"] <= 120 * 1.1  # histogram: within 9 %
    assert current["p50_ms"] <= current["p95_ms"]
    assert job["progress"]["processed"] == job["result"]["rows"] >= 2


def test_update_stats_refuses_a_bad_number_of_weeks(handlers):
    for weeks in (0, "2", 1000, True):
        with pytest.raises(InvalidJobError, match="weeks"):
            handlers.enqueue("system.update_stats", {"weeks": weeks})
