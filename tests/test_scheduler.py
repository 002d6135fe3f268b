"""The scheduler on the real Redis and PostgreSQL: on time, once per slot across processes, takeover, missed runs,
no overlap, stuck runs, overrides, a flushed Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
from rq.utils import str_to_date

from app.runtime.control import pause, resume
from app.scheduling import schedule_store
from app.scheduling.scheduler import Scheduler
from app.scheduling.schedules import load_schedules
from app.store.db import connect
from app.store.migrate import apply_migrations
from app.store.runs import RunFilter, list_runs
from queues import SCHEDULER_LEADER_KEY
from tests.fixtures import wait_for
from tests.waits import wait_status

pytest_plugins = ["tests.worker_processes"]  # the `workers` fixture

EVERY_2S = """
schedules:
  - id: tick
    task: system.ping
    queue: harvest
    cron: "*/2 * * * * *"
    args: {echo: tick}
"""


@pytest.fixture
def schedules_file(tmp_path):
    path = tmp_path / "schedules.yaml"
    path.write_text(EVERY_2S)
    return path


@pytest.fixture
def db(database_url):
    apply_migrations(database_url)
    with connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def processes(redis_url, database_url, schedules_file):
    """Start scheduler and worker processes against the test's servers; all are stopped afterwards."""
    started = []
    env = {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": database_url, "BULLRQ_SCHEDULES": str(schedules_file)}

    def start(*argv):
        started.append(subprocess.Popen([sys.executable, "-m", *argv], env=env))
        return started[-1]

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in started:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def _scheduled_jobs(redis_conn) -> list[tuple[datetime, datetime]]:
    """(slot, created_at) of every job the scheduler fired, by slot."""
    out = []
    for key in redis_conn.scan_iter("rq:job:*"):
        slot, created = redis_conn.hmget(key, "schedule_slot", "created_at")
        if slot:
            out.append((str_to_date(slot.decode()), str_to_date(created.decode())))
    return sorted(out)


@pytest.mark.slow
def test_three_schedulers_fire_each_slot_once_on_time_and_a_standby_takes_over(redis_conn, db, processes):
    processes("app.cli.workers", "run", "harvest", "--name", "sched-worker")
    schedulers = [processes("app.cli.main", "scheduler") for _ in range(3)]
    wait_for(lambda: len(_scheduled_jobs(redis_conn)) >= 4, timeout=60, message="four slots to fire")

    leader = redis_conn.get(SCHEDULER_LEADER_KEY).decode()
    active = next(p for p in schedulers if f".{p.pid}." in leader)
    active.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(lambda: (redis_conn.get(SCHEDULER_LEADER_KEY) or b"").decode() not in ("", leader), timeout=60,
             message="a standby to take over")
    takeover = time.monotonic() - killed_at
    before = len(_scheduled_jobs(redis_conn))
    wait_for(lambda: len(_scheduled_jobs(redis_conn)) >= before + 3, timeout=60, message="firing to go on")

    fired = _scheduled_jobs(redis_conn)
    slots = [slot for slot, _ in fired]
    assert len(slots) == len(set(slots)), "a slot fired twice"
    assert all(slot.second % 2 == 0 and slot.microsecond == 0 for slot in slots)
    # slots due while nobody led fire when the new leader takes over; none fires absurdly late (how soon is the
    # benchmarks' business: a busy machine delays every process)
    assert all(created - slot < timedelta(seconds=takeover + 15) for slot, created in fired)
    gaps = [(b - a).total_seconds() for a, b in zip(slots, slots[1:], strict=False)]
    assert gaps == [2.0] * len(gaps), "a slot was missed"
    row = schedule_store.get_schedule(db, "tick")
    assert row["total_runs"] == len(fired)
    wait_for(lambda: schedule_store.get_schedule(db, "tick")["last_status"] in ("success", "running"))


def _scheduled_job_ids(redis_conn) -> list[tuple[datetime, str]]:
    """(slot, job id) of every job the scheduler fired, by slot."""
    out = []
    for key in redis_conn.scan_iter("rq:job:*"):
        slot = redis_conn.hget(key, "schedule_slot")
        if slot:
            out.append((str_to_date(slot.decode()), key.decode().removeprefix("rq:job:")))
    return sorted(out)


def _scheduler(redis_conn, database_url, body: str, tmp_path, clock):
    path = tmp_path / "entries.yaml"
    path.write_text(body)
    process = Scheduler(redis_conn, database_url, load_schedules(path), clock=lambda: clock[0])
    assert process._holds_lease()
    return process


EVERY_MINUTE = """
schedules:
  - id: minutely
    task: system.ping
    queue: harvest
    cron: "* * * * *"
    max_runtime: 120
"""


def test_missed_slots_fire_once_then_move_to_the_next_future_slot(redis_conn, database_url, db, tmp_path):
    clock = [datetime(2026, 11, 23, 10, 0, 30, tzinfo=UTC)]
    process = _scheduler(redis_conn, database_url, EVERY_MINUTE, tmp_path, clock)
    assert schedule_store.get_schedule(db, "minutely")["next_run_at"] == datetime(2026, 11, 23, 10, 1, tzinfo=UTC)
    clock[0] = datetime(2026, 11, 23, 13, 7, 10, tzinfo=UTC)  # everything was down for three hours
    process.tick()
    process.tick()
    row = schedule_store.get_schedule(db, "minutely")
    assert row["total_runs"] == 1 and row["last_status"] == "running"
    assert row["last_run_at"] == datetime(2026, 11, 23, 10, 1, tzinfo=UTC)
    assert row["next_run_at"] == datetime(2026, 11, 23, 13, 8, tzinfo=UTC)
    assert len(_scheduled_jobs(redis_conn)) == 1


def test_catch_up_off_skips_missed_slots(redis_conn, database_url, db, tmp_path):
    clock = [datetime(2026, 11, 23, 10, 0, 30, tzinfo=UTC)]
    process = _scheduler(redis_conn, database_url, EVERY_MINUTE + "    catch_up: false\n", tmp_path, clock)
    clock[0] = datetime(2026, 11, 23, 13, 7, 10, tzinfo=UTC)
    process.tick()
    row = schedule_store.get_schedule(db, "minutely")
    assert row["total_runs"] == 0 and row["next_run_at"] == datetime(2026, 11, 23, 13, 8, tzinfo=UTC)
    assert _scheduled_jobs(redis_conn) == []
    skipped = list_runs(db, RunFilter(schedule_id="minutely", status="skipped"))["runs"]
    assert len(skipped) == 1 and "catch_up" in skipped[0]["error_message"]


def test_an_entry_whose_run_waits_is_not_started_again_and_has_no_backlog(redis_conn, database_url, db, tmp_path):
    clock = [datetime(2026, 11, 23, 10, 0, 30, tzinfo=UTC)]
    process = _scheduler(redis_conn, database_url, EVERY_MINUTE, tmp_path, clock)
    clock[0] = datetime(2026, 11, 23, 10, 1, 0, 100000, tzinfo=UTC)
    process.tick()  # fires; no worker runs it, so it waits and its entry stays "running"
    first = schedule_store.get_schedule(db, "minutely")["current_job_id"]
    for minute in (2, 3, 4, 5):  # far past max_runtime (120 s) since the fire, but the run never started
        clock[0] = datetime(2026, 11, 23, 10, minute, 0, 100000, tzinfo=UTC)
        process.tick()
    row = schedule_store.get_schedule(db, "minutely")
    assert (row["total_runs"], row["current_job_id"]) == (1, first)
    assert len(_scheduled_jobs(redis_conn)) == 1  # one job waits for the entry, however long
    skipped = list_runs(db, RunFilter(schedule_id="minutely", status="skipped"))["runs"]
    assert len(skipped) == 4 and all("still waiting to start" in run["error_message"] for run in skipped)


LONG_RUN = """
schedules:
  - id: long
    task: system.ping
    queue: harvest
    cron: "* * * * *"
    args: {sleep: 60}
    max_runtime: 120
"""


def test_a_run_its_worker_did_not_stop_is_canceled_past_max_runtime_and_the_entry_fires(redis_conn, database_url,
                                                                                          db, tmp_path, workers):
    clock = [datetime.now(UTC)]
    process = _scheduler(redis_conn, database_url, LONG_RUN, tmp_path, clock)
    clock[0] = schedule_store.get_schedule(db, "long")["next_run_at"] + timedelta(milliseconds=100)
    process.tick()
    first = schedule_store.get_schedule(db, "long")["current_job_id"]
    assert redis_conn.hget(f"rq:job:{first}", "timeout") == b"120"  # its worker stops it at max_runtime
    workers.start("harvest", name="long-1")
    wait_status(redis_conn, first, "started", timeout=30)
    started = str_to_date(redis_conn.hget(f"rq:job:{first}", "started_at").decode())

    while True:  # the scheduler's clock moves on, slot by slot, until past max_runtime (120 s) and the grace (30 s)
        clock[0] = schedule_store.get_schedule(db, "long")["next_run_at"] + timedelta(milliseconds=100)
        process.tick()
        if clock[0] > started + timedelta(seconds=150):
            break  # the worker did not stop it (the scheduler's clock ran ahead of the worker's)
        assert schedule_store.get_schedule(db, "long")["current_job_id"] == first
    row = schedule_store.get_schedule(db, "long")
    assert row["total_runs"] == 2 and row["current_job_id"] != first
    assert wait_status(redis_conn, first, "canceled", timeout=30) == "canceled"  # it does not run on beside the next
    [stuck] = [run for run in list_runs(db, RunFilter(schedule_id="long"))["runs"] if run["job_id"] == first] or [None]
    assert stuck is None or stuck["status"] != "completed"


def test_state_follows_the_job_and_survives_a_flushed_redis(redis_conn, database_url, db, tmp_path):
    from app.runtime.worker import build_worker

    clock = [datetime(2026, 11, 23, 10, 0, 30, tzinfo=UTC)]
    process = _scheduler(redis_conn, database_url, EVERY_MINUTE, tmp_path, clock)
    clock[0] = datetime(2026, 11, 23, 10, 1, 0, 100000, tzinfo=UTC)
    process.tick()
    build_worker(["harvest"], redis_conn, "sched-test").work(burst=True)
    process.tick()
    row = schedule_store.get_schedule(db, "minutely")
    assert row["last_status"] == "success" and row["last_duration_ms"] is not None and row["current_job_id"] is None

    clock[0] = datetime(2026, 11, 23, 10, 2, 0, 100000, tzinfo=UTC)
    process.tick()
    redis_conn.flushall()  # the running job vanishes with everything else in Redis
    process.tick()
    row = schedule_store.get_schedule(db, "minutely")
    assert (row["total_runs"], row["last_status"]) == (2, "error") and "vanished" in row["last_error"]
    process._lease_checked = 0
    assert process._holds_lease()  # takes the lease again after the flush
    clock[0] = datetime(2026, 11, 23, 10, 3, 0, 100000, tzinfo=UTC)
    process.tick()
    assert schedule_store.get_schedule(db, "minutely")["total_runs"] == 3


def test_overrides_persist_across_restarts_until_cleared(redis_conn, database_url, db, tmp_path):
    clock = [datetime(2026, 11, 23, 10, 0, 30, tzinfo=UTC)]
    _scheduler(redis_conn, database_url, EVERY_MINUTE, tmp_path, clock)
    row = schedule_store.set_overrides(db, "minutely", cron="0 9 * * *", timezone="Asia/Tokyo", enabled=False)
    assert (row["effective_cron"], row["effective_timezone"], row["effective_enabled"]) == (
        "0 9 * * *", "Asia/Tokyo", False,
    )  # fmt: skip
    assert row["next_run_at"].astimezone(UTC).hour == 0  # 09:00 in Tokyo is 00:00 UTC
    schedule_store.sync_declared(db, load_schedules(tmp_path / "entries.yaml"))  # a restart re-reads the yaml
    row = schedule_store.get_schedule(db, "minutely")
    assert (row["cron"], row["effective_cron"], row["effective_enabled"]) == ("* * * * *", "0 9 * * *", False)
    row = schedule_store.clear_overrides(db, "minutely")
    assert (row["effective_cron"], row["effective_timezone"], row["effective_enabled"]) == ("* * * * *", "UTC", True)
    with pytest.raises(Exception, match="not a valid"):
        schedule_store.set_overrides(db, "minutely", cron="99 * * * *")
    with pytest.raises(schedule_store.UnknownScheduleError, match="minutely"):
        schedule_store.get_schedule(db, "nope")


_FIRE_THEN_DIE = """
import os, sys
from datetime import datetime
from app.scheduling import schedule_store
from app.connections import redis_from_url
from app.scheduling.scheduler import Scheduler
from app.scheduling.schedules import load_schedules

enqueue = schedule_store.enqueue
def enqueue_then_die(*args, **kwargs):  # the process dies once the job is in Redis, before its COMMIT
    enqueue(*args, **kwargs)
    os._exit(9)
schedule_store.enqueue = enqueue_then_die
moment = datetime.fromisoformat(sys.argv[4])
Scheduler(redis_from_url(sys.argv[1]), sys.argv[2], load_schedules(sys.argv[3]), clock=lambda: moment).tick()
"""


def test_a_scheduler_dying_between_enqueue_and_commit_does_not_fire_the_slot_twice(redis_conn, database_url, db,
                                                                                     tmp_path):
    clock = [datetime(2026, 11, 23, 10, 0, 30, tzinfo=UTC)]
    standby = _scheduler(redis_conn, database_url, EVERY_MINUTE, tmp_path, clock)
    clock[0] = datetime(2026, 11, 23, 10, 1, 0, 100000, tzinfo=UTC)
    dying = subprocess.run(
        [sys.executable, "-c", _FIRE_THEN_DIE, os.environ["REDIS_URL"], database_url, str(tmp_path / "entries.yaml"),
         clock[0].isoformat()], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert dying.returncode == 9, dying.stderr
    assert len(_scheduled_jobs(redis_conn)) == 1  # in Redis, but its claim in PostgreSQL was rolled back
    assert schedule_store.get_schedule(db, "minutely")["total_runs"] == 0

    standby.tick()  # the slot is still due in PostgreSQL: the standby fires it, with the same job id
    row = schedule_store.get_schedule(db, "minutely")
    assert (row["total_runs"], row["next_run_at"]) == (1, datetime(2026, 11, 23, 10, 2, tzinfo=UTC))
    assert len(_scheduled_jobs(redis_conn)) == 1
    assert redis_conn.lrange("rq:queue:harvest", 0, -1) == [row["current_job_id"].encode()]


def test_enabling_an_entry_in_the_yaml_fires_no_slot_that_passed_while_it_was_disabled(redis_conn, database_url, db,
                                                                                       tmp_path):
    clock = [datetime(2026, 11, 23, 10, 0, 30, tzinfo=UTC)]
    _scheduler(redis_conn, database_url, EVERY_MINUTE + "    enabled: false\n", tmp_path, clock)
    clock[0] = datetime(2026, 11, 23, 10, 7, 10, tzinfo=UTC)  # disabled through seven slots, then enabled: restart
    redis_conn.delete(SCHEDULER_LEADER_KEY)
    process = _scheduler(redis_conn, database_url, EVERY_MINUTE + "    enabled: true\n", tmp_path, clock)
    process.tick()
    row = schedule_store.get_schedule(db, "minutely")
    assert (row["total_runs"], row["next_run_at"]) == (0, datetime(2026, 11, 23, 10, 8, tzinfo=UTC))
    assert _scheduled_jobs(redis_conn) == []
    clock[0] = datetime(2026, 11, 23, 10, 8, 0, 100000, tzinfo=UTC)
    process.tick()
    assert schedule_store.get_schedule(db, "minutely")["total_runs"] == 1


SHORT_LIMIT = """
schedules:
  - id: short
    task: system.ping
    queue: harvest
    cron: "* * * * * *"
    args: {sleep: 30}
    max_runtime: 3
"""


def test_max_runtime_stops_the_run_counted_from_its_start_not_from_the_fire(redis_conn, database_url, db, tmp_path,
                                                                             workers):
    pause(redis_conn, "harvest")
    path = tmp_path / "entries.yaml"
    path.write_text(SHORT_LIMIT)
    process = Scheduler(redis_conn, database_url, load_schedules(path))  # the real clock
    assert process._holds_lease()

    def skipped_while_waiting():
        process.tick()
        time.sleep(0.2)
        return len(list_runs(db, RunFilter(schedule_id="short", status="skipped"))["runs"]) >= 5

    wait_for(skipped_while_waiting, timeout=60, message="slots to pass while the run waits")  # > max_runtime
    [(_, job_id)] = [(slot, j) for slot, j in _scheduled_job_ids(redis_conn)]  # one job: no backlog
    resume(redis_conn, "harvest")
    workers.start("harvest", name="short-1")
    wait_status(redis_conn, job_id, "scheduled", "failed", timeout=60)  # timed out: retried per the queue's policy
    started, ended, error = redis_conn.hmget(f"rq:job:{job_id}", "started_at", "ended_at", "exc_info")
    assert b"JobTimeoutError" in error
    assert str_to_date(ended.decode()) - str_to_date(started.decode()) >= timedelta(seconds=3)
    runs = list_runs(db, RunFilter(job_id=job_id))["runs"]
    assert all(run["status"] != "completed" for run in runs)
