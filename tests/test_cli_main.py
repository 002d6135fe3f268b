"""`bullrq enqueue` from the shell against the real Redis."""

from __future__ import annotations

import os

from rq.registry import ScheduledJobRegistry

from app.local.servers import free_port
from app.runtime.jobs import fetch_job, get_queue
from app.tasks import queue_keys
from tests.fixtures import run_cli


def test_enqueue_prints_the_id_of_a_job_on_the_chosen_queue(redis_conn):
    result = run_cli("bullrq", "enqueue", "system.ping", "--data", '{"echo": [1, 2]}', "--queue", "harvest")
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    job = fetch_job(job_id, redis_conn)
    assert job.origin == "harvest" and job.func_name == "system.ping" and job.kwargs == {"echo": [1, 2]}
    assert get_queue("harvest", redis_conn).job_ids == [job_id]


def test_enqueue_with_priority_and_delay(redis_conn):
    low = run_cli("bullrq", "enqueue", "system.ping", "--queue", "sync").stdout.strip()
    high = run_cli("bullrq", "enqueue", "system.ping", "--queue", "sync", "--priority", "high").stdout.strip()
    keys = queue_keys("sync")
    assert get_queue("sync", redis_conn).job_ids == [low]  # RQ's list holds normal priority
    assert redis_conn.lrange(keys.lane(1), 0, -1) == [high.encode()]
    delayed = run_cli("bullrq", "enqueue", "system.ping", "--queue", "sync", "--delay", "60").stdout.strip()
    assert delayed in ScheduledJobRegistry("sync", connection=redis_conn).get_job_ids()


def test_bad_input_exits_2_with_one_clear_line(redis_conn):
    cases = {
        ("system.ping", "--data", "{not json", "--queue", "sync"): "--data is not valid JSON",
        ("nope.task", "--data", "{}"): "unknown task type 'nope.task'",
        ("system.ping", "--queue", "nope"): "unknown queue 'nope'",
        ("system.ping",): "choose one with option 'queue'",
        ("system.ping", "--queue", "sync", "--priority", "urgent"): "option 'priority'",
        ("system.ping", "--queue", "sync", "--data", '{"sleep": 600}'): "sleep must be",
        ("system.ping", "--queue", "sync", "--data", "[1]"): "must be a JSON object",
    }
    for args, message in cases.items():
        result = run_cli("bullrq", "enqueue", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr, (args, result.stderr)
    assert redis_conn.keys("rq:job:*") == []  # nothing half-created


def test_redis_down_is_one_line_and_exit_1():
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    result = run_cli("bullrq", "enqueue", "system.ping", "--queue", "sync", env=env)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "is unreachable" in result.stderr


def test_invalid_setting_names_the_variable(redis_url):
    for name, value in (("DEBUG", "maybe"), ("TZ", "Mars/Olympus"), ("REDIS_URL", "http://x")):
        result = run_cli("bullrq", "enqueue", "system.ping", "--queue", "sync", env={**os.environ, name: value})
        assert result.returncode == 2, name
        assert result.stderr.startswith("error: ") and name in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
