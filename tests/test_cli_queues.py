"""`bullrq queues ...`, `bullrq jobs ...` and `bullrq enqueue --dedup` through click's runner, on the real Redis and
with real worker processes where a job must run."""

from __future__ import annotations

import json

import pytest

from app.cli.main import cli
from app.runtime.enqueue import enqueue
from app.runtime.jobs import fetch_job
from app.tasks import queue_keys
from queues import queue_names
from tests.handlers import runs
from tests.waits import status, stays, wait_status

pytest_plugins = ["tests.worker_processes"]  # the `workers` fixture


@pytest.fixture
def bullrq(runner, redis_url, monkeypatch):
    """Run `bullrq ARGS` in this process against the test's Redis; returns the click result."""
    monkeypatch.setenv("REDIS_URL", redis_url)

    def invoke(*args: str, code: int = 0):
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        assert result.exit_code == code, (args, result.output)
        return result

    return invoke


def _failed_job(redis_conn, workers, tag: str):
    job = enqueue(redis_conn, "semantics.fail", {"tag": tag}, {"queue": "harvest", "attempts": 1})
    workers.start("harvest", name=f"burst-{tag}", burst=True)
    assert workers.wait_exit(f"burst-{tag}", timeout=60) == 0
    assert status(redis_conn, job.id) == "failed"
    return job


def test_stats_counts_jobs_by_state_as_a_table_and_as_json(bullrq, redis_conn):
    for _ in range(3):
        enqueue(redis_conn, "system.ping", {}, {"queue": "reports"})
    enqueue(redis_conn, "system.ping", {}, {"queue": "reports", "delay": 600})
    parent = enqueue(redis_conn, "system.ping", {}, {"queue": "harvest"})
    for _ in range(2):  # waiting for their parent: deferred, not waiting
        enqueue(redis_conn, "system.ping", {}, {"queue": "harvest", "dependsOn": [parent.id]})
    bullrq("queues", "pause", "sync")

    report = json.loads(bullrq("queues", "stats", "--json").output)
    assert set(report["queues"]) == set(queue_names())
    reports = report["queues"]["reports"]
    assert (reports["waiting"], reports["delayed"], reports["active"], reports["paused"]) == (3, 1, 0, False)
    assert report["queues"]["sync"]["paused"] is True and report["queues"]["sync"]["waiting"] == 0
    assert (report["queues"]["harvest"]["waiting"], report["queues"]["harvest"]["deferred"]) == (1, 2)

    table = bullrq("queues", "stats").output.splitlines()
    assert table[0].split() == ["QUEUE", "WAITING", "ACTIVE", "DELAYED", "DEFERRED", "COMPLETED", "FAILED", "WORKERS",
                                "PAUSED"]  # fmt: skip
    rows = {line.split()[0]: line.split()[1:] for line in table[1:]}
    assert rows["reports"] == ["3", "0", "1", "0", "0", "0", "0", "no"]
    assert rows["harvest"] == ["1", "0", "0", "2", "0", "0", "0", "no"]
    assert rows["sync"][-1] == "yes" and rows["harvest"][-1] == "no"


def test_pause_holds_jobs_on_a_running_worker_and_resume_lets_them_run(bullrq, redis_conn, workers):
    workers.start("harvest", name="h-1")
    assert bullrq("queues", "pause", "harvest").output == "harvest: paused\n"
    assert redis_conn.exists(queue_keys("harvest").paused)
    job = enqueue(redis_conn, "semantics.record", {"tag": "held"}, {"queue": "harvest"})
    stays(lambda: status(redis_conn, job.id) == "queued", 1.5)

    assert bullrq("queues", "resume", "harvest").output == "harvest: resumed\n"
    wait_status(redis_conn, job.id, "finished", timeout=60)
    assert not redis_conn.exists(queue_keys("harvest").paused)


def test_retry_failed_one_by_id_then_all(bullrq, redis_conn, workers):
    first, second = _failed_job(redis_conn, workers, "f1"), _failed_job(redis_conn, workers, "f2")

    assert bullrq("queues", "retry-failed", "harvest", "--id", first.id).output == "harvest: 1 job(s) requeued\n"
    assert status(redis_conn, first.id) == "queued" and status(redis_conn, second.id) == "failed"
    assert fetch_job(first.id, redis_conn).retries_left == 0  # attempts reset: 1 attempt, none used
    assert bullrq("queues", "retry-failed", "harvest").output == "harvest: 1 job(s) requeued\n"
    assert status(redis_conn, second.id) == "queued"
    assert redis_conn.lrange(queue_keys("harvest").queue, 0, -1) == [first.id.encode(), second.id.encode()]


def test_clean_deletes_only_ended_jobs_older_than_the_grace(bullrq, redis_conn, workers):
    job = _failed_job(redis_conn, workers, "old")
    assert bullrq("queues", "clean", "harvest", "--state", "failed", "--grace", "3600").output == (
        "harvest: 0 failed job(s) deleted\n"
    )
    assert status(redis_conn, job.id) == "failed"
    assert bullrq("queues", "clean", "harvest", "--state", "failed").output == "harvest: 1 failed job(s) deleted\n"
    assert fetch_job(job.id, redis_conn) is None and redis_conn.zcard(queue_keys("harvest").failed) == 0
    refused = bullrq("queues", "clean", "harvest", "--state", "running", code=2)
    assert "Invalid value for '--state'" in refused.output


def test_empty_needs_force_and_deletes_waiting_and_delayed_jobs(bullrq, redis_conn):
    waiting = enqueue(redis_conn, "system.ping", {}, {"queue": "sync"})
    delayed = enqueue(redis_conn, "system.ping", {}, {"queue": "sync", "delay": 600})

    refused = bullrq("queues", "empty", "sync", code=2)
    assert "--force" in refused.output
    assert status(redis_conn, waiting.id) == "queued"
    assert bullrq("queues", "empty", "sync", "--force").output == "sync: 2 job(s) deleted\n"
    assert fetch_job(waiting.id, redis_conn) is None and fetch_job(delayed.id, redis_conn) is None

    unknown = bullrq("queues", "pause", "nope", code=2)
    assert "unknown queue 'nope'" in unknown.output


def test_jobs_show_and_cancel_a_waiting_and_a_running_job(bullrq, redis_conn, workers):
    waiting = enqueue(redis_conn, "system.ping", {"echo": "hi"}, {"queue": "sync"})
    shown = json.loads(bullrq("jobs", "show", waiting.id).output)
    assert (shown["id"], shown["type"], shown["queue"], shown["status"]) == (waiting.id, "system.ping", "sync",
                                                                              "waiting")
    assert shown["data"] == {"echo": "hi"}
    assert bullrq("jobs", "cancel", waiting.id).output == f"{waiting.id}: canceled\n"
    assert status(redis_conn, waiting.id) == "canceled"

    workers.start("harvest", name="h-1")
    running = enqueue(redis_conn, "semantics.gated", {"tag": "running", "wait": 300}, {"queue": "harvest"})
    wait_status(redis_conn, running.id, "started", timeout=60)
    assert bullrq("jobs", "cancel", running.id).output == f"{running.id}: canceling\n"
    wait_status(redis_conn, running.id, "canceled", timeout=60)  # its worker stopped it, long before the gate
    assert runs(redis_conn, "running", event="end") == []
    assert json.loads(bullrq("jobs", "show", running.id).output)["status"] == "canceled"

    missing = bullrq("jobs", "show", "no-such-job", code=2)
    assert "no job 'no-such-job'" in missing.output


def test_enqueue_dedup_reuses_the_pending_job_and_makes_a_new_one_once_it_ended(bullrq, redis_conn, workers):
    first = bullrq("enqueue", "system.ping", "--queue", "sync", "--dedup", "nightly-42").output.strip()
    again = bullrq("enqueue", "system.ping", "--queue", "sync", "--dedup", "nightly-42").output.strip()
    assert again == first
    assert redis_conn.lrange(queue_keys("sync").queue, 0, -1) == [first.encode()]

    workers.start("sync", name="s-1")
    wait_status(redis_conn, first, "finished", timeout=60)
    later = bullrq("enqueue", "system.ping", "--queue", "sync", "--dedup", "nightly-42").output.strip()
    assert later != first  # the key was released when its job ended
    wait_status(redis_conn, later, "finished", timeout=60)
