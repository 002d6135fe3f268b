"""RQ's own monitor, `rq info`, still reads bullrq's queues and worker registrations (RQ's keys stay RQ's)."""

from __future__ import annotations

import re
import subprocess
import time

import pytest
from rq.registry import DeferredJobRegistry, StartedJobRegistry
from rq.worker import Worker

from app.runtime.control import pause
from app.runtime.enqueue import enqueue
from app.runtime.flows import create_batch
from app.runtime.jobs import SERIALIZER, declare_queues
from app.runtime.leases import lease_score, recover
from app.runtime.stats import queue_stats
from app.runtime.worker import build_worker
from app.store.db import connect
from app.store.history import HistoryWriter
from app.store.migrate import apply_migrations
from app.tasks import queue_keys
from queues import LANE_INFIX, QUEUES_SET, queue_names
from tests.fixtures import BIN, wait_for
from tests.handlers import open_gate
from tests.test_web_dashboard import AUTH
from tests.waits import status, wait_status

pytestmark = pytest.mark.slow
pytest_plugins = ["tests.worker_processes"]  # the `workers` fixture


def _rq_info(redis_url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "rq"), "info", "--url", redis_url, *args], capture_output=True, text=True, timeout=60
    )


def test_rq_info_lists_our_queues_and_workers(redis_url, redis_conn, workers):
    worker = workers.start("harvest", "sync", name="info-w")
    busy = enqueue(redis_conn, "semantics.gated", {"tag": "busy"}, {"queue": "harvest"})
    wait_status(redis_conn, busy.id, "started")
    for n in range(2):
        enqueue(redis_conn, "system.ping", {"echo": n}, {"queue": "embeddings"})  # no worker: they wait

    info = _rq_info(redis_url)
    assert info.returncode == 0, info.stdout + info.stderr
    assert "Traceback" not in info.stderr
    assert re.search(r"^embeddings\s+\|\S*\s*2, 0 executing", info.stdout, re.M), info.stdout
    assert re.search(r"^harvest\s+\|\S*\s*0, 1 executing", info.stdout, re.M), info.stdout  # its lease, in rq:wip
    assert re.search(rf"^info-w\.\S+\.{worker.pid} .*: busy harvest, sync\.", info.stdout, re.M), info.stdout

    by_queue = _rq_info(redis_url, "--by-queue")
    assert by_queue.returncode == 0, by_queue.stdout + by_queue.stderr
    assert re.search(r"^\s*harvest:\s+info-w\.\S+ \(busy\)", by_queue.stdout, re.M), by_queue.stdout
    open_gate(redis_conn, "busy")
    wait_status(redis_conn, busy.id, "finished")


_LINE = re.compile(r"^(\S+)\s+\|█*\s+(\d+), (\d+) executing", re.M)


def _waiting_by_queue(output: str) -> dict[str, int]:
    """`rq info`'s waiting counts added up per queue: a lane `<q>:priority-<p>` counts for `<q>`."""
    totals: dict[str, int] = {}
    for name, count, _ in _LINE.findall(output):
        base = name.split(f":{LANE_INFIX}")[0]
        totals[base] = totals.get(base, 0) + int(count)
    return totals


def test_rq_info_lists_every_declared_queue_from_the_first_start(redis_url, redis_conn, workers):
    workers.start("harvest", name="first-start")
    info = _rq_info(redis_url, "--only-queues")
    assert info.returncode == 0, info.stdout + info.stderr
    assert set(_waiting_by_queue(info.stdout)) == set(queue_names()), info.stdout

    done = enqueue(redis_conn, "system.ping", {}, {"queue": "harvest"})
    wait_status(redis_conn, done.id, "finished")
    (worker,) = Worker.all(connection=redis_conn, serializer=SERIALIZER)
    wait_for(lambda: worker.get_state() == "idle", message="the worker to be idle")
    assert worker.get_current_job_id() is None and worker.get_current_job() is None  # RQ's own API, no error


def test_rq_info_counts_every_waiting_job_of_every_priority_paused_or_not(redis_url, redis_conn):
    for priority in range(1, 11):
        for _ in range(priority % 3 + 1):
            enqueue(redis_conn, "system.ping", {}, {"queue": "embeddings", "priority": priority})
    hook = {"channel": "webhook", "to": "https://example.com/hook", "text": "hi"}
    for _ in range(3):
        enqueue(redis_conn, "notifications.send", hook)  # high priority by default
    enqueue(redis_conn, "system.ping", {}, {"queue": "sync", "priority": "low"})
    enqueue(redis_conn, "system.ping", {}, {"queue": "sync", "delay": 600})  # delayed: not waiting
    pause(redis_conn, "notifications")
    pause(redis_conn, "sync")

    info = _rq_info(redis_url, "--only-queues")
    assert info.returncode == 0, info.stdout + info.stderr
    stats = queue_stats(redis_conn)["queues"]
    counted = _waiting_by_queue(info.stdout)
    assert {name: counted.get(name, 0) for name in queue_names()} == {n: s["waiting"] for n, s in stats.items()}
    assert counted["notifications"] == 3 and counted["embeddings"] == 20 and counted["sync"] == 1
    assert re.search(r"^notifications:priority-1\s+\|█*\s+3,", info.stdout, re.M), info.stdout  # a named lane
    total = int(re.search(r"(\d+) jobs total", info.stdout).group(1))
    assert total == sum(s["waiting"] for s in stats.values())


def test_rq_info_counts_deferred_jobs_apart_and_rqs_registry_lists_them(redis_url, redis_conn):
    parent = enqueue(redis_conn, "system.ping", {}, {"queue": "harvest"})
    children = [enqueue(redis_conn, "system.ping", {"echo": n}, {"queue": "harvest", "dependsOn": [parent.id]})
                for n in range(3)]  # fmt: skip
    batch = create_batch(redis_conn, [("system.ping", {}, {"queue": "embeddings"})],
                         on_complete=("system.ping", {}, {"queue": "embeddings"}))  # fmt: skip

    info = _rq_info(redis_url, "--only-queues")
    assert info.returncode == 0 and "Traceback" not in info.stderr, info.stdout + info.stderr
    stats = queue_stats(redis_conn)["queues"]
    assert (stats["harvest"]["waiting"], stats["harvest"]["deferred"]) == (1, 3)
    assert (stats["embeddings"]["waiting"], stats["embeddings"]["deferred"]) == (1, 1)  # its callback is held
    counted = _waiting_by_queue(info.stdout)
    assert {name: counted.get(name, 0) for name in queue_names()} == {n: s["waiting"] for n, s in stats.items()}
    assert int(re.search(r"(\d+) jobs total", info.stdout).group(1)) == 2  # deferred jobs are not waiting
    # RQ's own registry class reads ours: the same ids, oldest first, and its cleanup leaves them be
    harvest = DeferredJobRegistry("harvest", connection=redis_conn)
    assert harvest.get_job_ids() == [child.id for child in children] and harvest.count == 3
    assert DeferredJobRegistry("embeddings", connection=redis_conn).get_job_ids() == [batch.callbacks["onComplete"]]

    build_worker(["harvest", "embeddings"], redis_conn, "info-deferred").work(burst=True)
    info = _rq_info(redis_url, "--only-queues")
    assert int(re.search(r"(\d+) jobs total", info.stdout).group(1)) == 0, info.stdout
    assert re.search(r"^harvest\s+\|\S*\s*0, 0 executing, 4 finished, 0 failed", info.stdout, re.M), info.stdout
    assert re.search(r"^embeddings\s+\|\S*\s*0, 0 executing, 2 finished", info.stdout, re.M), info.stdout
    assert harvest.count == 0


def _snapshot(connection) -> dict:
    return {key: connection.dump(key) for key in sorted(connection.scan_iter(count=1000))}


def test_reading_with_rq_info_and_rq_dashboard_changes_nothing(redis_url, redis_conn, client, database_url):
    apply_migrations(database_url)
    job = enqueue(redis_conn, "system.ping", {}, {"queue": "harvest", "attempts": 2})
    worker = build_worker(["harvest"], redis_conn, "dies", database_url)
    reply = worker._dequeue(redis_conn)  # lease the job as a worker would, then "die"
    member = reply[1].decode()
    keys = queue_keys("harvest")
    redis_conn.zadd(keys.started, {member: lease_score(time.time() - 1)}, xx=True)  # its lease ran out
    redis_conn.delete(worker.key)
    before = _snapshot(redis_conn)

    for _ in range(3):  # RQ's registry count() and `rq info` run StartedJobRegistry.cleanup on rq:wip
        info = _rq_info(redis_url)
        assert info.returncode == 0, info.stdout + info.stderr
        assert re.search(r"^harvest\s+\|\S*\s*0, 1 executing", info.stdout, re.M), info.stdout
        assert StartedJobRegistry("harvest", connection=redis_conn).count == 1
        for path in ("/0/data/queues.json", "/0/data/workers.json", "/0/data/jobs/harvest/started/8/asc/1.json",
                     f"/0/data/job/{job.id}.json"):  # fmt: skip
            assert client.get(f"/api/admin/queues{path}", headers=AUTH).status_code == 200, path
    assert _snapshot(redis_conn) == before

    assert recover(redis_conn, "harvest") == [(job.id, "requeued")]  # bullrq alone takes it back, once
    build_worker(["harvest"], redis_conn, "survivor", database_url).work(burst=True)
    assert status(redis_conn, job.id) == "finished"
    writer = HistoryWriter(redis_conn, database_url, "info-test")
    while writer.drain_once(block=0.05):
        pass
    writer.stop()
    with connect(database_url, autocommit=True) as conn:
        rows = conn.execute("SELECT attempt, status FROM job_runs WHERE job_id = %s ORDER BY attempt", (job.id,))
        assert [(r["attempt"], r["status"]) for r in rows.fetchall()] == [(1, "abandoned"), (2, "completed")]


def test_jobs_waiting_in_an_earlier_releases_lanes_move_to_todays(redis_conn):
    keys = queue_keys("sync")
    first = enqueue(redis_conn, "system.ping", {}, {"queue": "sync", "priority": "high"})
    second = enqueue(redis_conn, "system.ping", {}, {"queue": "sync", "priority": "high"})
    redis_conn.delete(keys.lane(1), QUEUES_SET)
    redis_conn.rpush(keys.legacy_lanes[1], first.id, second.id)  # where they waited before lanes were RQ queues

    declare_queues(redis_conn)
    assert redis_conn.lrange(keys.lane(1), 0, -1) == [first.id.encode(), second.id.encode()]
    assert not redis_conn.exists(keys.legacy_lanes[1])
    assert redis_conn.sismember(QUEUES_SET, keys.lane(1)) and redis_conn.sismember(QUEUES_SET, keys.queue)
    assert queue_stats(redis_conn)["queues"]["sync"]["waiting"] == 2
