"""The `workers` CLI against the real Redis, with real worker processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest
from rq.job import JobStatus
from rq.worker import Worker

from app.config import RunDir
from app.local.processes import RunProcesses, pid_exists
from app.local.servers import free_port
from app.runtime.enqueue import enqueue
from app.runtime.jobs import SERIALIZER, fetch_job, get_queue
from bench.drill_kit import preload_env
from queues import queue_names
from tests.fixtures import BIN, processes_with, run_cli, wait_for
from tests.handlers import open_gate, runs

pytestmark = pytest.mark.slow


@pytest.fixture
def home(isolated_env, redis_url, monkeypatch):
    """The run directory of this test, whose workers also run the test task types (a job held at a gate:
    `semantics.gated`); whatever its workers left running is stopped afterwards, and the background supervisor
    `workers start` started with them."""
    for name, value in preload_env(dict(os.environ), "tests.handlers").items():
        monkeypatch.setenv(name, value)
    yield isolated_env
    _kill_supervisor(isolated_env)
    run_cli("workers", "stop", "--timeout", "2")


def _log(home, name: str) -> str:
    path = home / "logs" / "workers" / f"{name}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def _gated(redis_conn, tag: str, queue: str = "sync") -> str:
    """A job that runs until the test opens the gate of `tag` (at most 120 s): it cannot end on its own in time."""
    return enqueue(redis_conn, "semantics.gated", {"tag": tag, "wait": 120}, {"queue": queue}).id


def _wait_held(redis_conn, tag: str) -> None:
    """Wait until the handler of `tag` runs (its start recorded: past the worker's bookkeeping, at the gate)."""
    wait_for(lambda: runs(redis_conn, tag), timeout=60, message=f"the job {tag} to start")


def _kill_supervisor(home) -> None:
    """SIGKILL the run directory's supervisor: crashed processes then stay down (as before `workers start`)."""
    pid = RunProcesses(RunDir(home)).supervisor_pid()
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not pid_exists(pid), message="the supervisor to die")


def _pid(home, name: str) -> int:
    return int((home / "pids" / f"{name}.pid").read_text())


def _enqueue(*args: str) -> str:
    result = run_cli("bullrq", "enqueue", "system.ping", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _status(redis_conn, job_id):
    job = fetch_job(job_id, redis_conn)
    return job.get_status(refresh=True) if job else None


def _group(home, pid: int) -> list[int]:
    """The process and every process in its process group (RQ forks its scheduler into it)."""
    members = [pid]
    for candidate in processes_with("app.cli.workers", home):
        try:
            if candidate != pid and os.getpgid(candidate) == pid:
                members.append(candidate)
        except ProcessLookupError:
            pass
    return members


def test_started_worker_runs_a_job_enqueued_by_type(home, redis_conn):
    started = run_cli("workers", "start", "sync")
    assert started.returncode == 0, started.stderr
    assert "sync-1: starting" in started.stdout

    job_id = _enqueue("--queue", "sync", "--data", '{"echo": {"n": 1, "text": "olá"}}')
    wait_for(lambda: _status(redis_conn, job_id) == JobStatus.FINISHED, message="the job to finish")
    job = fetch_job(job_id, redis_conn)
    assert job.return_value() == {"n": 1, "text": "olá"}
    assert job.func_name == "system.ping"
    assert job.worker_name.startswith("sync-1.")


def test_second_start_does_not_double_the_processes(home):
    first = run_cli("workers", "start")
    assert first.returncode == 0, first.stderr
    pids = {name: _pid(home, f"{name}-1") for name in queue_names()}

    second = run_cli("workers", "start")
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("already running") == len(queue_names())
    assert "started 0 worker(s)" in second.stdout
    assert {name: _pid(home, f"{name}-1") for name in queue_names()} == pids
    leaders = [pid for pid in processes_with("app.cli.workers run", home) if os.getpgid(pid) == pid]
    assert sorted(leaders) == sorted(pids.values())  # one worker process per queue, none twice


def test_status_reports_a_sigkilled_worker_as_dead(home):
    assert run_cli("workers", "start", "sync", "notifications").returncode == 0
    _kill_supervisor(home)  # nothing restarts the worker: it stays dead
    healthy = run_cli("workers", "status", "--json")
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    rows = {row["name"]: row for row in json.loads(healthy.stdout)["workers"]}
    assert rows["sync-1"]["alive"] and rows["sync-1"]["state"] == "idle"
    assert rows["sync-1"]["pid"] == _pid(home, "sync-1") and rows["sync-1"]["rss_bytes"] > 0
    assert rows["sync-1"]["queues"] == ["sync"]

    os.kill(_pid(home, "sync-1"), signal.SIGKILL)
    wait_for(lambda: not pid_exists(_pid(home, "sync-1")), message="the worker to die")
    after = run_cli("workers", "status", "--json")
    assert after.returncode == 1
    report = json.loads(after.stdout)
    rows = {row["name"]: row for row in report["workers"]}
    assert report["dead"] == ["sync-1"]
    assert rows["sync-1"]["alive"] is False and rows["sync-1"]["state"] == "dead"
    assert rows["notifications-1"]["alive"] is True

    table = run_cli("workers", "status")
    assert table.returncode == 1
    assert "dead: sync-1" in table.stderr
    assert "supervisor: none" in table.stdout


def test_a_crashed_worker_is_restarted_and_its_job_taken_back_at_once_using_an_attempt(home, redis_conn):
    started = run_cli("workers", "start", "harvest")
    assert started.returncode == 0, started.stderr
    assert "supervisor: started" in started.stdout
    job = enqueue(redis_conn, "system.ping", {"sleep": 60}, {"queue": "harvest", "attempts": 2})
    for crash in (1, 2):
        wait_for(lambda: _status(redis_conn, job.id) == JobStatus.STARTED, timeout=20, message="the job to start")
        doomed = _pid(home, "harvest-1")
        os.kill(doomed, signal.SIGKILL)  # as an OOM kill of a job that eats its worker
        # back within 10 s with a new process; the job does not wait out its 20 s lease
        wait_for(lambda: pid_exists(_pid(home, "harvest-1")) and _pid(home, "harvest-1") != doomed, timeout=10,
                 message="the worker to be restarted")  # fmt: skip
        if crash == 1:
            wait_for(lambda: fetch_job(job.id, redis_conn).retries_left == 0, timeout=10, message="the job taken back")
    # the second crash used the last attempt: the job fails instead of killing workers forever
    wait_for(lambda: _status(redis_conn, job.id) == JobStatus.FAILED, timeout=10, message="the job to fail")
    assert b"died" in redis_conn.hget(f"rq:job:{job.id}", "exc_info")

    report = run_cli("workers", "status", "--json")
    assert report.returncode == 0, report.stdout + report.stderr
    rows = {row["name"]: row for row in json.loads(report.stdout)["workers"]}
    assert rows["harvest-1"]["restarts"] == 2 and "SIGKILL" in rows["harvest-1"]["last_exit"]
    assert rows["harvest-1"]["alive"] and json.loads(report.stdout)["supervisor"]["pid"]
    log = (home / "logs" / "supervisor.log").read_text()
    assert "harvest-1" in log and "restarted" in log


def test_a_stopped_worker_is_not_restarted_and_the_supervisor_leaves_when_nothing_is_left(home):
    assert run_cli("workers", "start", "reports").returncode == 0
    supervisor = RunProcesses(RunDir(home)).supervisor_pid()
    assert supervisor is not None
    assert "reports-1: stopped" in run_cli("workers", "stop", "reports").stdout
    wait_for(lambda: not pid_exists(supervisor), timeout=20, message="the idle supervisor to exit")
    assert not list((home / "pids").glob("reports-*"))


def test_stop_leaves_no_process_and_no_registration(home, redis_conn):
    assert run_cli("workers", "start").returncode == 0
    pids = [p for name in queue_names() for p in _group(home, _pid(home, f"{name}-1"))]
    assert len(pids) >= len(queue_names())

    stopped = run_cli("workers", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.count(": stopped") == len(queue_names())
    assert not [pid for pid in pids if pid_exists(pid)]
    assert not list((home / "pids").glob("*.pid"))
    assert Worker.all(connection=redis_conn, serializer=SERIALIZER) == []


def test_stop_lets_the_running_job_finish_and_starts_no_other(home, redis_conn):
    assert run_cli("workers", "start", "sync").returncode == 0
    running = _gated(redis_conn, "running")
    behind = enqueue(redis_conn, "semantics.record", {"tag": "behind"}, {"queue": "sync"}).id
    _wait_held(redis_conn, "running")

    stop = subprocess.Popen(
        [str(BIN / "workers"), "stop", "sync", "--timeout", "120"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: "warm shutdown requested" in _log(home, "sync-1"), timeout=60, message="the stop to arrive")
        assert _status(redis_conn, running) == JobStatus.STARTED  # the stop came while the job ran
        open_gate(redis_conn, "running")
        out, err = stop.communicate(timeout=120)
    finally:
        if stop.poll() is None:
            stop.kill()
            stop.communicate()
    assert stop.returncode == 0, err
    assert "sync-1: stopped" in out
    assert _status(redis_conn, running) == JobStatus.FINISHED
    assert fetch_job(running, redis_conn).return_value() == "opened"
    assert _status(redis_conn, behind) == JobStatus.QUEUED  # no job starts after SIGTERM
    assert runs(redis_conn, "behind") == []
    assert get_queue("sync", redis_conn).job_ids == [behind]


def test_stop_after_timeout_kills_the_worker_and_requeues_its_job(home, redis_conn):
    assert run_cli("workers", "start", "sync").returncode == 0
    job_id = _gated(redis_conn, "held")
    _wait_held(redis_conn, "held")

    stopped = run_cli("workers", "stop", "sync", "--timeout", "0.5")
    assert "sync-1: killed" in stopped.stdout and f"job {job_id} requeued" in stopped.stdout
    assert _status(redis_conn, job_id) == JobStatus.QUEUED
    assert get_queue("sync", redis_conn).job_ids == [job_id]

    open_gate(redis_conn, "held")  # the killed run never took it: the next run goes through
    assert run_cli("workers", "start", "sync").returncode == 0
    wait_for(lambda: _status(redis_conn, job_id) == JobStatus.FINISHED, timeout=60, message="the retried job")
    assert fetch_job(job_id, redis_conn).return_value() == "opened"
    assert len(runs(redis_conn, "held")) == 2


def test_start_replaces_a_stale_pid_file_and_requeues_the_dead_workers_job(home, redis_conn):
    assert run_cli("workers", "start", "sync").returncode == 0
    _kill_supervisor(home)
    old_pid = _pid(home, "sync-1")
    job_id = _gated(redis_conn, "survivor")
    _wait_held(redis_conn, "survivor")
    os.kill(old_pid, signal.SIGKILL)
    wait_for(lambda: not pid_exists(old_pid), message="the worker to die")

    restarted = run_cli("workers", "start", "sync")
    assert restarted.returncode == 0, restarted.stderr
    assert f"stale pid file of dead pid {old_pid}" in restarted.stdout
    assert f"job {job_id} requeued" in restarted.stdout
    assert _pid(home, "sync-1") != old_pid
    open_gate(redis_conn, "survivor")
    wait_for(lambda: _status(redis_conn, job_id) == JobStatus.FINISHED, timeout=60, message="the requeued job")
    assert fetch_job(job_id, redis_conn).return_value() == "opened"
    assert len(runs(redis_conn, "survivor")) == 2


def test_restart_replaces_the_processes(home):
    assert run_cli("workers", "start", "reports").returncode == 0
    before = _pid(home, "reports-1")
    restarted = run_cli("workers", "restart", "reports")
    assert restarted.returncode == 0, restarted.stderr
    assert "reports-1: stopped" in restarted.stdout and "reports-1: starting" in restarted.stdout
    assert _pid(home, "reports-1") != before and not pid_exists(before)


def test_unknown_queue_exits_2_listing_the_valid_ones(home):
    for command in (["start", "nope"], ["stop", "sync", "nope"], ["run", "nope"]):
        result = run_cli("workers", *command)
        assert result.returncode == 2, command
        assert "unknown queue 'nope'" in result.stderr and "cache-cleanup" in result.stderr
        assert "Traceback" not in result.stderr


def test_unreachable_redis_is_one_line_and_exit_1(home):
    env = {**os.environ, "REDIS_URL": f"redis://:s3cret-pass@127.0.0.1:{free_port()}/0"}
    for command in (["status"], ["start", "sync"]):
        result = run_cli("workers", *command, env=env)
        assert result.returncode == 1, command
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: Redis at redis://:***@127.0.0.1:")
        assert "s3cret-pass" not in result.stderr
    assert not (home / "pids").exists() or not list((home / "pids").glob("*.pid"))

    # nothing given and nothing published in the run directory: the line says where the CLI looked
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    alone = run_cli("workers", "status", env=env)
    if alone.returncode == 1:  # (a Redis on localhost:6379 would answer)
        assert f"run directory {home}" in alone.stderr and "scripts/up" in alone.stderr


def test_logs_prints_the_last_lines_of_a_worker(home):
    assert run_cli("workers", "start", "harvest").returncode == 0
    assert run_cli("workers", "stop", "harvest").returncode == 0  # adds the shutdown lines
    everything = (home / "logs" / "workers" / "harvest-1.log").read_text().strip().splitlines()
    assert len(everything) >= 3
    shown = run_cli("workers", "logs", "harvest-1", "-n", "2")
    assert shown.returncode == 0
    assert shown.stdout.strip().splitlines() == everything[-2:]
    assert "serving harvest" in "\n".join(everything)

    missing = run_cli("workers", "logs", "nobody-1")
    assert missing.returncode == 2 and "harvest-1" in missing.stderr


def test_workers_refuse_to_start_on_a_redis_that_may_evict_keys_unless_told(home, redis_conn):
    redis_conn.config_set("maxmemory-policy", "volatile-lru")
    try:
        for command in (("start", "sync"), ("run", "sync", "--burst")):
            refused = run_cli("workers", *command)
            assert refused.returncode == 1 and refused.stdout == "", refused
            [line] = refused.stderr.splitlines()
            assert "maxmemory-policy is volatile-lru" in line and "BULLRQ_ALLOW_EVICTION=1" in line
        assert not (home / "pids").exists() or not list((home / "pids").iterdir())
        allowed = run_cli("workers", "run", "sync", "--burst", env={**os.environ, "BULLRQ_ALLOW_EVICTION": "1"})
        assert allowed.returncode == 0 and "warning: Redis maxmemory-policy is volatile-lru" in allowed.stderr
    finally:
        redis_conn.config_set("maxmemory-policy", "noeviction")
    assert "maxmemory-policy" not in run_cli("workers", "run", "sync", "--burst").stderr
