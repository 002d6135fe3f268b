"""`bullrq schedules ...` through click's runner on the real PostgreSQL and Redis: list, show, enable, disable,
set-cron, set-timezone, clear, run, reset, history."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from app.cli.main import cli
from app.scheduling.schedule_store import get_schedule, sync_declared
from app.scheduling.schedules import load_schedules
from app.store.db import connect
from app.store.history import write_rows
from app.store.migrate import apply_migrations
from app.store.rows import run_row
from app.tasks import queue_keys

SCHEDULES = """
schedules:
  - id: nightly
    task: system.ping
    queue: harvest
    cron: "0 3 * * *"
    timezone: UTC
  - id: weekly
    task: system.ping
    queue: reports
    cron: "0 4 * * 0"
    timezone: Europe/Lisbon
"""


@pytest.fixture
def db(database_url, tmp_path):
    apply_migrations(database_url)
    path = tmp_path / "schedules.yaml"
    path.write_text(SCHEDULES)
    with connect(database_url, autocommit=True) as conn:
        sync_declared(conn, load_schedules(path))
        yield conn


@pytest.fixture
def bullrq(runner, redis_url, database_url, monkeypatch):
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("DATABASE_URL", database_url)

    def invoke(*args: str, code: int = 0):
        result = runner.invoke(cli, ["schedules", *args], catch_exceptions=False)
        assert result.exit_code == code, (args, result.output)
        return result

    return invoke


def test_list_and_show_print_each_entry_with_its_state(bullrq, db):
    rows = {row["id"]: row for row in json.loads(bullrq("list", "--json").output)}
    assert set(rows) == {"nightly", "weekly"}
    assert rows["weekly"]["effective_cron"] == "0 4 * * 0" and rows["weekly"]["effective_timezone"] == "Europe/Lisbon"
    table = bullrq("list").output.splitlines()
    assert [line.split()[:3] for line in table] == [["nightly", "on", "0"], ["weekly", "on", "0"]]
    shown = json.loads(bullrq("show", "nightly").output)
    assert (shown["id"], shown["task"], shown["queue"], shown["total_runs"]) == ("nightly", "system.ping", "harvest", 0)
    missing = bullrq("show", "nope", code=2)
    assert "unknown schedule 'nope'" in missing.output and "nightly, weekly" in missing.output


def test_overrides_change_the_entry_until_cleared(bullrq, db):
    assert json.loads(bullrq("disable", "nightly").output)["effective_enabled"] is False
    assert get_schedule(db, "nightly")["enabled_override"] is False
    assert json.loads(bullrq("enable", "nightly").output)["effective_enabled"] is True

    changed = json.loads(bullrq("set-cron", "nightly", "30 5 * * *").output)
    assert changed["effective_cron"] == "30 5 * * *" and changed["cron"] == "0 3 * * *"
    next_run = datetime.fromisoformat(changed["next_run_at"])
    assert (next_run.astimezone(UTC).hour, next_run.minute) == (5, 30)
    zoned = json.loads(bullrq("set-timezone", "nightly", "Asia/Tokyo").output)
    assert zoned["effective_timezone"] == "Asia/Tokyo"
    assert datetime.fromisoformat(zoned["next_run_at"]).astimezone(UTC).hour == 20  # 05:30 in Tokyo
    assert "override" in bullrq("list").output.splitlines()[0]

    bad = bullrq("set-cron", "nightly", "61 * * * *", code=2)
    assert "61" in bad.output and "Traceback" not in bad.output
    assert bullrq("set-timezone", "nightly", "Mars/Base", code=2).output

    cleared = json.loads(bullrq("clear", "nightly").output)
    assert (cleared["effective_cron"], cleared["effective_timezone"], cleared["enabled_override"]) == (
        "0 3 * * *", "UTC", None)  # fmt: skip
    assert datetime.fromisoformat(cleared["next_run_at"]).astimezone(UTC).hour == 3


def test_run_enqueues_once_reset_frees_it_and_history_lists_its_runs(bullrq, db, redis_conn, database_url):
    job_id = bullrq("run", "nightly").output.strip()
    assert redis_conn.lrange(queue_keys("harvest").queue, 0, -1) == [job_id.encode()]
    assert redis_conn.hget(f"rq:job:{job_id}", "schedule_id") == b"nightly"
    refused = bullrq("run", "nightly", code=1)
    assert "running already" in refused.output and job_id in refused.output
    assert redis_conn.llen(queue_keys("harvest").queue) == 1

    reset = json.loads(bullrq("reset", "nightly").output)
    assert reset["current_job_id"] is None and reset["last_status"] == "error"
    assert reset["last_error"] == "reset by an operator"
    again = bullrq("run", "nightly").output.strip()
    assert again != job_id and redis_conn.llen(queue_keys("harvest").queue) == 2

    assert bullrq("history", "nightly").output == "no runs yet\n"
    stamp = datetime.now(UTC).timestamp()
    row = run_row(job_id=job_id, attempt=1, queue="harvest", task="system.ping", status="failed",
                  schedule_id="nightly", started_at=stamp, ended_at=stamp + 0.25)  # fmt: skip
    with connect(database_url, autocommit=True) as conn:
        write_rows(conn, [row])
    [line] = bullrq("history", "nightly").output.splitlines()
    assert "failed" in line and job_id in line and "250.0 ms" in line
