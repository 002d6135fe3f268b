"""Run history in PostgreSQL: a row per attempt, nothing lost while PostgreSQL is down, retention."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import redis

from app.errors import PermanentFailure
from app.local.servers import EmbeddedPostgres
from app.runtime import control
from app.runtime.enqueue import enqueue, enqueue_many
from app.runtime.jobs import fetch_job
from app.runtime.leases import lease_score, recover
from app.runtime.worker import build_worker
from app.store.db import connect
from app.store.history import GROUP, HistoryWriter, ensure_group, write_rows
from app.store.migrate import apply_migrations
from app.store.rows import MAX_ROW_BYTES, STREAM_MAXLEN, run_row, stream_cap
from app.store.runs import (
    RunFilter,
    delete_older_than,
    duration_percentiles,
    failure_rate,
    list_runs,
    throughput_per_hour,
)
from app.tasks import Task, queue_keys, registry
from queues import HISTORY_STREAM
from tests.fixtures import wait_for
from tests.handlers import RUNS  # noqa: F401  (registers the semantics.* task types the worker processes run)
from tests.waits import status, wait_status

pytest_plugins = ["tests.worker_processes"]  # the `workers` fixture


def _boom(kind: str = "permanent") -> None:
    if kind == "permanent":
        raise PermanentFailure("the provider rejected the record")
    raise RuntimeError("provider answered 503")


def _deep(depth: int = 150) -> None:
    if depth:
        _deep(depth - 1)
    raise PermanentFailure("l\u00e9gende " * 2000)  # long, and every é takes 6 bytes escaped in JSON


_CALLS: dict[str, int] = {}


def _flaky(key: str) -> str:
    _CALLS[key] = _CALLS.get(key, 0) + 1
    if _CALLS[key] == 1:
        raise RuntimeError("first try fails")
    return "second try works"


@pytest.fixture(autouse=True, scope="module")
def history_tasks():
    for task in (Task("test.boom", _boom, None), Task("test.flaky", _flaky, None), Task("test.deep", _deep, None)):
        registry.register(task)
    yield


@pytest.fixture
def db(database_url):
    apply_migrations(database_url)
    with connect(database_url, autocommit=True) as conn:
        yield conn


def _drain(redis_conn, database_url) -> int:
    writer = HistoryWriter(redis_conn, database_url, "test-drain")
    total = 0
    while written := writer.drain_once(block=0.05):
        total += written
    writer.stop()
    return total


def _runs(db, job_id: str) -> list[tuple]:
    rows = list_runs(db, RunFilter(job_id=job_id))["runs"]
    return sorted((r["attempt"], r["status"], r["error_type"]) for r in rows)


def test_every_outcome_leaves_one_row_per_attempt(redis_conn, database_url, db):
    queue = "harvest"
    done = enqueue(redis_conn, "system.ping", {"echo": {"ok": 1}}, {"queue": queue})
    permanent = enqueue(redis_conn, "test.boom", {}, {"queue": queue, "attempts": 3})
    exhausted = enqueue(redis_conn, "test.boom", {"kind": "transient"}, {"queue": queue, "attempts": 2,
                                                                         "backoff": {"type": "fixed", "delay": 0}})
    flaky = enqueue(redis_conn, "test.flaky", {"key": "a"}, {"queue": queue, "attempts": 2,
                                                             "backoff": {"type": "fixed", "delay": 0}})
    timed_out = enqueue(redis_conn, "system.ping", {"sleep": 3}, {"queue": queue, "timeout": 1, "attempts": 1})
    canceled = enqueue(redis_conn, "system.ping", {}, {"queue": queue, "delay": 600})
    assert control.cancel(redis_conn, canceled.id) == "canceled"

    build_worker([queue], redis_conn, "history-test", database_url).work(burst=True)
    _drain(redis_conn, database_url)

    assert _runs(db, done.id) == [(1, "completed", None)]
    row = list_runs(db, RunFilter(job_id=done.id))["runs"][0]
    assert row["task"] == "system.ping" and row["queue"] == queue and row["result"] == {"ok": 1}
    assert row["duration_ms"] >= 0 and row["started_at"] <= row["ended_at"] and row["worker"].startswith("history-")
    assert _runs(db, permanent.id) == [(1, "failed", "PermanentFailure")]
    assert _runs(db, exhausted.id) == [(1, "retried", "RuntimeError"), (2, "failed", "RuntimeError")]
    assert _runs(db, flaky.id) == [(1, "retried", "RuntimeError"), (2, "completed", None)]
    assert _runs(db, timed_out.id) == [(1, "timed_out", "JobTimeoutError")]
    assert _runs(db, canceled.id) == [(1, "canceled", None)]
    failed = list_runs(db, RunFilter(error_text="503"))["runs"]
    assert {r["job_id"] for r in failed} == {exhausted.id}


def test_an_abandoned_attempt_is_recorded_and_retried(redis_conn, database_url, db):
    job = enqueue(redis_conn, "system.ping", {}, {"queue": "harvest", "attempts": 2})
    worker = build_worker(["harvest"], redis_conn, "dies")
    reply = worker._dequeue(redis_conn)  # lease the job as a worker would, then "die"
    assert reply[0] == 1
    keys = queue_keys("harvest")
    member = reply[1].decode()
    redis_conn.zadd(keys.started, {member: lease_score(time.time() - 1)})  # its lease ran out: no heartbeat came

    assert recover(redis_conn, "harvest") == [(job.id, "requeued")]
    assert recover(redis_conn, "harvest") == []  # recovered once only
    build_worker(["harvest"], redis_conn, "survivor").work(burst=True)
    _drain(redis_conn, database_url)
    assert _runs(db, job.id) == [(1, "abandoned", "Abandoned"), (2, "completed", None)]


def test_replayed_and_late_rows_never_duplicate_or_regress(db):
    now = time.time()
    started = run_row(job_id="j1", attempt=1, queue="sync", task="system.ping", status="started", started_at=now)
    ended = run_row(job_id="j1", attempt=1, queue="sync", task="system.ping", status="completed",
                    started_at=now, ended_at=now + 0.5, result="ok")
    for batch in ([started], [ended], [started], [ended, started], [started, ended]):
        write_rows(db, batch)
    rows = list_runs(db, RunFilter(job_id="j1"))["runs"]
    assert [(r["attempt"], r["status"], r["duration_ms"]) for r in rows] == [(1, "completed", 500.0)]
    # the hourly rollup counted the attempt once, whatever the replays
    assert db.execute("SELECT sum(completed) AS c, sum(total) AS t FROM job_runs_hourly").fetchone() == {"c": 1, "t": 1}


def test_window_stats_come_from_the_rollup_and_match_the_rows(db):
    now = time.time()
    rows = []
    for n in range(1, 201):  # durations 10 ms .. 2000 ms, 1 in 10 failing
        status = "failed" if n % 10 == 0 else "completed"
        rows.append(run_row(job_id=f"w{n}", attempt=1, queue="reports", task="system.ping", status=status,
                            started_at=now - n, ended_at=now - n + n / 100))
    write_rows(db, rows)
    [rate] = failure_rate(db, queue="reports", hours=1)
    assert (rate["total"], rate["failed"], rate["rate"]) == (200, 20, 0.1)
    assert sum(r["total"] for r in throughput_per_hour(db, hours=1)) == 200
    [stats] = duration_percentiles(db, queue="reports", hours=1)
    exact = sorted(n * 10 for n in range(1, 201) if n % 10)
    assert stats["runs"] == 180
    for fraction, key in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
        expected = exact[round(fraction * len(exact)) - 1]
        assert abs(stats[key] - expected) <= 0.09 * expected, (key, stats[key], expected)


@pytest.fixture
def own_postgres():
    """A PostgreSQL of this test's own, which the test may stop and start."""
    parent = Path(tempfile.mkdtemp(prefix="bullrq-pg-"))
    parent.chmod(0o755)
    server = EmbeddedPostgres(parent / "postgres", durable=False)
    url = server.start()
    apply_migrations(url)
    yield server, url
    server.stop()
    shutil.rmtree(parent, ignore_errors=True)


@pytest.mark.slow
def test_postgres_down_mid_stream_loses_and_duplicates_nothing(redis_conn, redis_url, own_postgres):
    server, url = own_postgres
    env = {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": url}
    workers = [
        subprocess.Popen([sys.executable, "-m", "app.cli.workers", "run", "harvest", "--name", f"hist-{n}"], env=env)
        for n in (1, 2)
    ]
    try:
        wait_for(lambda: redis_conn.scard(queue_keys("harvest").workers) == 2, message="two workers")
        ids = []
        for step in range(30):
            batch = [("system.ping", {"echo": step}, {"queue": "harvest"})] * 20
            ids += [enqueued.id for enqueued in enqueue_many(redis_conn, batch)]
            if step == 10:
                server.stop()  # PostgreSQL goes away mid-stream; the workers keep going
            if step == 20:
                assert redis_conn.xlen(HISTORY_STREAM) > 0  # rows wait in Redis meanwhile
            time.sleep(0.05)
        stats_key = queue_keys("harvest").stats
        wait_for(lambda: int(redis_conn.hget(stats_key, "completed") or 0) == len(ids), timeout=30,
                 message="every job to complete while PostgreSQL is down")
        server.start()

        def written():
            with psycopg.connect(url) as conn:
                return conn.execute("SELECT count(*) FROM job_runs").fetchone()[0] >= len(ids)

        wait_for(written, timeout=60, interval=0.5, message="the waiting rows to reach PostgreSQL")
        with psycopg.connect(url) as conn:
            total, distinct = conn.execute("SELECT count(*), count(DISTINCT job_id) FROM job_runs").fetchone()
            statuses = conn.execute("SELECT DISTINCT status FROM job_runs").fetchall()
        assert (total, distinct) == (len(ids), len(ids))
        assert statuses == [("completed",)]
        wait_for(lambda: redis_conn.xlen(HISTORY_STREAM) == 0, message="the stream to empty")
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(timeout=30)


def test_retention_deletes_exactly_what_is_due(redis_conn, database_url, db, monkeypatch):
    now = datetime.now(UTC)
    ages = {"old-1": 90, "old-2": 61, "kept-1": 59, "kept-2": 1}
    for job_id, days in ages.items():
        stamp = (now - timedelta(days=days)).timestamp()
        write_rows(db, [run_row(job_id=job_id, attempt=1, queue="sync", task="system.ping", status="completed",
                                started_at=stamp, ended_at=stamp)])
    assert delete_older_than(db, 60, batch=1) == 2
    left = {r["job_id"] for r in list_runs(db)["runs"]}
    assert left == {"kept-1", "kept-2"}

    monkeypatch.setenv("DATABASE_URL", database_url)  # the task reads the settings, as in a worker process
    job = enqueue(redis_conn, "system.retention_cleanup", {"runDays": 30})
    build_worker(["cache-cleanup"], redis_conn, "retention").work(burst=True)
    assert fetch_job(job.id, redis_conn).return_value() == {"runs_deleted": 1, "jobs_deleted": 0}
    assert {r["job_id"] for r in list_runs(db)["runs"]} == {"kept-2"}


def test_a_malformed_row_is_dropped_and_the_others_are_written(redis_conn, database_url, db):
    good = run_row(job_id="good", attempt=1, queue="sync", task="system.ping", status="completed",
                   started_at=time.time(), ended_at=time.time())
    for row in (good, '{"job_id": "bad", "attempt": "not a number"}', "not json at all"):
        redis_conn.xadd(HISTORY_STREAM, {"row": row})
    assert _drain(redis_conn, database_url) == 3
    assert [r["job_id"] for r in list_runs(db)["runs"]] == ["good"]
    assert redis_conn.xlen(HISTORY_STREAM) == 0


def test_a_result_with_a_nul_character_is_still_recorded(redis_conn, database_url, db):
    job = enqueue(redis_conn, "system.ping", {"echo": "before\u0000after"}, {"queue": "harvest"})
    build_worker(["harvest"], redis_conn, "nul-test").work(burst=True)
    assert _drain(redis_conn, database_url) == 1
    [run] = list_runs(db, RunFilter(job_id=job.id))["runs"]
    assert run["status"] == "completed" and run["result"] == "before\ufffdafter"


def test_rows_trimmed_from_the_stream_while_pending_do_not_stop_the_writer(redis_conn, database_url, db):
    """A batch read but not acknowledged (PostgreSQL went away) that the stream cap then trims comes back from
    Redis as ids without fields: the writer acknowledges them and goes on with the rows that still exist."""
    writer = HistoryWriter(redis_conn, database_url, "trimmed")
    ensure_group(redis_conn)
    lost = [run_row(job_id=f"lost-{n}", attempt=1, queue="sync", task="system.ping", status="completed")
            for n in range(3)]
    for row in lost:
        redis_conn.xadd(HISTORY_STREAM, {"row": row})
    redis_conn.xreadgroup(GROUP, "trimmed", {HISTORY_STREAM: ">"})  # read; the write that followed failed
    redis_conn.xtrim(HISTORY_STREAM, maxlen=0)  # the cap trimmed them while they waited
    kept = run_row(job_id="kept", attempt=1, queue="sync", task="system.ping", status="completed",
                   started_at=time.time(), ended_at=time.time())
    redis_conn.xadd(HISTORY_STREAM, {"row": kept})

    for _ in range(5):
        writer.drain_once(block=0.05)
    writer.stop()
    assert [r["job_id"] for r in list_runs(db)["runs"]] == ["kept"]
    assert redis_conn.xpending(HISTORY_STREAM, GROUP)["pending"] == 0


def test_a_row_with_a_long_traceback_fits_the_row_bound_and_keeps_its_end(redis_conn, database_url, db):
    job = enqueue(redis_conn, "test.deep", {}, {"queue": "harvest"})
    build_worker(["harvest"], redis_conn, "deep-test").work(burst=True)
    assert len(redis_conn.hget(f"rq:job:{job.id}", "exc_info")) > 12_000  # the job keeps its whole traceback
    [(_, fields)] = redis_conn.xrange(HISTORY_STREAM)
    assert len(fields[b"row"]) <= MAX_ROW_BYTES
    assert _drain(redis_conn, database_url) == 1
    [run] = list_runs(db, RunFilter(job_id=job.id))["runs"]
    assert run["status"] == "failed" and run["error_message"].startswith("l\u00e9gende")
    traceback = db.execute("SELECT error_traceback FROM job_runs WHERE job_id = %s", (job.id,)).fetchone()[
        "error_traceback"]
    assert traceback.endswith("gende \n")  # its end, where it failed, is kept
    # the cap and the row bound together bound the stream's memory
    assert STREAM_MAXLEN * MAX_ROW_BYTES <= 512 * 2**20


def test_a_redis_at_maxmemory_does_not_stop_a_running_job_from_finishing(redis_conn, workers):
    """Redis fills up (noeviction) while a job runs: its outcome is still recorded and its worker lives on (the
    finish script's first write releases the lease, and a script that has written may go on; Redis refuses only
    a script whose first write would need memory)."""
    workers.start("harvest", name="oom-1")
    job = enqueue(redis_conn, "system.ping", {"echo": "full", "sleep": 3}, {"queue": "harvest"})
    wait_status(redis_conn, job.id, "started")
    redis_conn.config_set("maxmemory", int(redis_conn.info("memory")["used_memory"]))
    try:
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            redis_conn.set("filler", "x" * 200_000)
        with pytest.raises(redis.exceptions.ResponseError, match="maxmemory"):
            enqueue(redis_conn, "system.ping", {"echo": "refused"}, {"queue": "harvest"})
        wait_status(redis_conn, job.id, "finished", "failed", timeout=30)
        assert status(redis_conn, job.id) == "finished" and workers.alive("oom-1")
    finally:
        redis_conn.config_set("maxmemory", 0)
    after = enqueue(redis_conn, "system.ping", {"echo": "after"}, {"queue": "harvest"})
    assert wait_status(redis_conn, after.id, "finished", timeout=30) and workers.alive("oom-1")


@pytest.mark.parametrize("history", ["1", "0"])
def test_bullrq_history_0_records_no_run_anywhere(redis_conn, database_url, db, monkeypatch, workers, history):
    monkeypatch.setenv("BULLRQ_HISTORY", history)  # read once per process: by the worker, and here for the cancel
    monkeypatch.setenv("DATABASE_URL", database_url)
    stream_cap.cache_clear()
    try:
        done = enqueue(redis_conn, "system.ping", {"echo": "ok"}, {"queue": "harvest"})
        failed = enqueue(redis_conn, "semantics.fail", {"tag": "f"}, {"queue": "harvest", "attempts": 1})
        canceled = enqueue(redis_conn, "system.ping", {}, {"queue": "harvest", "delay": 60})
        assert control.cancel(redis_conn, canceled.id) == "canceled"
    finally:
        stream_cap.cache_clear()
    workers.start("harvest", name="history-switch", burst=True)
    assert workers.wait_exit("history-switch", timeout=60) == 0
    assert fetch_job(done.id, redis_conn).get_status() == "finished"
    assert fetch_job(failed.id, redis_conn).get_status() == "failed"

    in_stream = redis_conn.xlen(HISTORY_STREAM)
    in_database = {r["job_id"] for r in list_runs(db)["runs"]}
    _drain(redis_conn, database_url)
    jobs = {r["job_id"] for r in list_runs(db)["runs"]}
    if history == "1":  # the same jobs, with history on, leave their rows (so the check below can fail)
        assert in_stream + len(in_database) > 0 and jobs == {done.id, failed.id, canceled.id}
    else:
        assert (in_stream, in_database, jobs) == (0, set(), set())


def _ended_days_ago(redis_conn, job_id: str, days: float) -> None:
    stamp = datetime.now(UTC) - timedelta(days=days)
    redis_conn.hset(f"rq:job:{job_id}", "ended_at", stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


def test_retention_deletes_ended_jobs_past_their_age_in_every_state(redis_conn, database_url, db, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("BULLRQ_JOB_RETENTION_DAYS", "20")
    finished = [enqueue(redis_conn, "system.ping", {"echo": n}, {"queue": "sync"}).id for n in range(3)]
    failed = [enqueue(redis_conn, "test.boom", {}, {"queue": "reports"}).id for _ in range(2)]
    canceled = [enqueue(redis_conn, "system.ping", {}, {"queue": "harvest", "delay": 600}).id for _ in range(2)]
    waiting = enqueue(redis_conn, "system.ping", {}, {"queue": "embeddings"}).id  # not ended: never deleted
    for job_id in canceled:
        control.cancel(redis_conn, job_id)
    build_worker(["sync", "reports"], redis_conn, "retention-jobs").work(burst=True)
    old = [finished[0], finished[1], failed[0], canceled[0]]
    kept = [finished[2], failed[1], canceled[1], waiting]
    for job_id in old:
        _ended_days_ago(redis_conn, job_id, 25)
    for job_id in kept[:3]:
        _ended_days_ago(redis_conn, job_id, 15)

    job = enqueue(redis_conn, "system.retention_cleanup", {})
    build_worker(["cache-cleanup"], redis_conn, "retention").work(burst=True)

    assert fetch_job(job.id, redis_conn).return_value() == {"runs_deleted": 0, "jobs_deleted": len(old)}
    assert [job_id for job_id in old if redis_conn.exists(f"rq:job:{job_id}")] == []
    assert all(redis_conn.exists(f"rq:job:{job_id}") for job_id in kept)
    assert redis_conn.zrange(queue_keys("sync").finished, 0, -1) == [finished[2].encode()]
    assert redis_conn.zrange(queue_keys("reports").failed, 0, -1) == [failed[1].encode()]
    assert redis_conn.zrange(queue_keys("harvest").canceled, 0, -1) == [canceled[1].encode()]
