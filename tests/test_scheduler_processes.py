"""The scheduler where a single process cannot show it: two claimants of one slot at the same moment on the real
PostgreSQL (the leader lease hides this race in every other test), and a real `bullrq scheduler` process starting
after its entries' slots were missed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta

import pytest
from rq.utils import str_to_date

from app.scheduling import schedule_store
from app.scheduling.schedules import load_schedules
from app.store.db import connect
from app.store.migrate import apply_migrations
from app.store.runs import RunFilter, list_runs
from tests.fixtures import wait_for
from tests.waits import stays

YEARLY = """
schedules:
  - id: catch-up
    task: system.ping
    queue: harvest
    cron: "0 0 1 1 *"
    timezone: UTC
  - id: no-catch-up
    task: system.ping
    queue: harvest
    cron: "0 0 1 1 *"
    timezone: UTC
    catch_up: false
"""


@pytest.fixture
def db(database_url):
    apply_migrations(database_url)
    with connect(database_url, autocommit=True) as conn:
        yield conn


def _jobs_of(redis_conn, schedule_id: str) -> list[tuple[str, datetime]]:
    """(job id, slot) of every job fired for `schedule_id`."""
    out = []
    for key in redis_conn.scan_iter("rq:job:*"):
        schedule, slot = redis_conn.hmget(key, "schedule_id", "schedule_slot")
        if schedule and schedule.decode() == schedule_id:
            out.append((key.decode().split(":", 2)[2], str_to_date(slot.decode()).replace(tzinfo=UTC)))
    return out


def _blocked_on_a_lock(db, pid: int) -> bool:
    row = db.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
    return row is not None and row["wait_event_type"] == "Lock"


def test_two_claimants_of_one_slot_at_once_fire_it_once(redis_conn, database_url, db, tmp_path):
    path = tmp_path / "schedules.yaml"
    path.write_text(YEARLY)
    schedule_store.sync_declared(db, load_schedules(path), now=datetime(2020, 6, 1, tzinfo=UTC))
    row = schedule_store.get_schedule(db, "catch-up")
    slot, after = row["next_run_at"], datetime(2022, 1, 1, tzinfo=UTC)
    assert slot == datetime(2021, 1, 1, tzinfo=UTC)

    with connect(database_url, autocommit=True) as first, connect(database_url, autocommit=True) as second:
        outcome: dict[str, str | None] = {}
        with first.transaction():  # the first claimant's claim is made and not yet committed ...
            first_job = schedule_store.fire(first, redis_conn, row, slot, after)
            assert first_job is not None
            # ... when the second, which read the same row and slot, claims it too
            racer = threading.Thread(
                target=lambda: outcome.update(second=schedule_store.fire(second, redis_conn, row, slot, after))
            )
            racer.start()
            wait_for(lambda: _blocked_on_a_lock(db, second.info.backend_pid), timeout=60,
                     message="the second claim to wait on the first")  # fmt: skip
        racer.join(timeout=60)
        assert not racer.is_alive()

    assert outcome == {"second": None}  # the compare-and-set found the slot taken
    assert _jobs_of(redis_conn, "catch-up") == [(first_job, slot)]
    row = schedule_store.get_schedule(db, "catch-up")
    assert (row["total_runs"], row["current_job_id"], row["next_run_at"]) == (1, first_job, after)


def test_a_scheduler_process_starting_after_downtime_fires_each_missed_entry_once(
    redis_conn, redis_url, database_url, db, tmp_path
):
    path = tmp_path / "schedules.yaml"
    path.write_text(YEARLY)
    down_since = datetime.now(UTC) - timedelta(days=3 * 366)  # the last time any scheduler ran
    schedule_store.sync_declared(db, load_schedules(path), now=down_since)
    first_missed = schedule_store.get_schedule(db, "catch-up")["next_run_at"]
    assert first_missed < datetime.now(UTC) - timedelta(days=365)  # two or three slots missed since

    env = {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": database_url, "BULLRQ_SCHEDULES": str(path)}
    process = subprocess.Popen([sys.executable, "-m", "app.cli.main", "scheduler"], env=env)
    try:
        wait_for(lambda: _jobs_of(redis_conn, "catch-up"), timeout=60, message="the missed slot to fire")
        skipped = lambda: list_runs(db, RunFilter(schedule_id="no-catch-up", status="skipped"))["runs"]  # noqa: E731
        wait_for(skipped, timeout=60, message="the entry without catch-up to skip its missed slot")
        stays(lambda: len(_jobs_of(redis_conn, "catch-up")) == 1 and not _jobs_of(redis_conn, "no-catch-up"), 2)
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0

    [(job_id, slot)] = _jobs_of(redis_conn, "catch-up")
    assert slot == first_missed  # once, for the first slot it missed, not once per missed slot
    now = datetime.now(UTC)
    caught_up = schedule_store.get_schedule(db, "catch-up")
    assert caught_up["total_runs"] == 1 and caught_up["current_job_id"] == job_id
    assert now < caught_up["next_run_at"] <= now.replace(month=1, day=1, hour=0, minute=0, second=0,
                                                         microsecond=0) + timedelta(days=366)  # fmt: skip
    skipped_entry = schedule_store.get_schedule(db, "no-catch-up")
    assert skipped_entry["total_runs"] == 0 and skipped_entry["next_run_at"] > now
    assert len(skipped()) == 1 and "catch_up" in skipped()[0]["error_message"]
