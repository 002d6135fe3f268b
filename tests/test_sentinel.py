"""Redis Sentinel: configured from the environment, the product's clients follow a failover to the promoted replica.

A real deployment on loopback (bench.sentinel_group): a master, a replica and three sentinels, with passwords on
the nodes and on the sentinels. The drill under load (workers, scheduler, web) is tests/test_drills.py's drill f.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time

import pytest
from redis.exceptions import RedisError

from app.config import load_settings
from app.connections import SENTINEL_TIMEOUT, redis_from_url
from app.local.servers import free_port
from app.runtime.enqueue import enqueue
from app.runtime.jobs import fetch_job, get_queue
from app.runtime.worker import SOCKET_TIMEOUT, build_worker
from bench.sentinel_group import SentinelGroup
from tests.conftest import TOKEN
from tests.fixtures import run_cli, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def group(tmp_path_factory):
    root = tmp_path_factory.mktemp("sentinel")
    root.chmod(0o755)
    group = SentinelGroup(root)
    try:
        group.start()
        yield group
    finally:
        group.stop()


def _until_it_answers(call, timeout: float = 30):
    """`call()` retried while Redis is unreachable (a failover under way); returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except RedisError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_the_environment_names_the_sentinels_and_one_client_follows_two_failovers(group, monkeypatch):
    for name, value in group.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("REDIS_URL", raising=False)
    client = redis_from_url(load_settings().redis_url)
    job = enqueue(client, "system.ping", {"echo": 1}, {"queue": "sync"}, wait_replicas=1, wait_timeout=30)
    assert job.replicas == 1  # the replica has it before the master dies

    first = group.master()
    group.kill_master()
    assert _until_it_answers(lambda: fetch_job(job.id, client)) is not None  # on the promoted replica
    second = group.wait_promoted(first)
    assert second is not first and group.role(second)["role"] == "master"

    group.rejoin(first)  # the killed node is back, as the new master's replica
    later = enqueue(client, "system.ping", {"echo": 2}, {"queue": "sync"}, wait_replicas=1, wait_timeout=30)
    assert later.replicas == 1  # written to the new master (never to the demoted node), and replicated
    group.kill_master()
    _until_it_answers(client.ping)
    assert group.wait_promoted(second) is first
    assert get_queue("sync", client).job_ids == [job.id, later.id]


def test_a_silent_sentinel_is_skipped_in_about_a_second(group):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # connections complete in the backlog; nothing ever answers them
        target = dataclasses.replace(group.target, sentinels=(silent.getsockname(), *group.target.sentinels))
        client = redis_from_url(target.url())
        started = time.monotonic()
        assert client.ping()
        assert time.monotonic() - started < 2 * SENTINEL_TIMEOUT + 1


def test_a_worker_on_the_sentinels_waits_seconds_not_minutes_for_an_answer(group):
    client = redis_from_url(group.target.url())
    build_worker(["sync"], client, "timeouts")
    connection = client.connection_pool.get_connection()
    try:
        assert connection.socket_timeout == SOCKET_TIMEOUT  # not the 415 s RQ sets for its own blocking dequeue
    finally:
        client.connection_pool.release(connection)


def test_the_web_app_and_its_dashboard_run_on_the_sentinels(group, monkeypatch, database_url):
    from app.web import create_app

    for name, value in group.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("REDIS_URL", raising=False)
    app = create_app({"TESTING": True, "DATABASE_URL": database_url, "ADMIN_TOKEN": TOKEN})
    try:
        client = app.test_client()
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert client.get("/readyz").status_code == 200
        body = {"type": "system.ping", "options": {"queue": "harvest"}}
        created = client.post("/api/admin/jobs", json=body, headers=auth)
        assert created.status_code == 201, created.get_json()
        assert client.get("/api/admin/workers", headers=auth).status_code == 200
        group.kill_master()
        assert client.get("/readyz").status_code == 503  # the dead master is not hidden
        wait_for(lambda: client.get("/readyz").status_code == 200, timeout=30, message="ready on the new master")
        listed = client.get("/api/admin/queues/0/data/queues.json", headers=auth)
        assert listed.status_code == 200
        assert {q["name"]: q["count"] for q in listed.get_json()["queues"]}.get("harvest") == 1
        job = client.get(f"/api/admin/jobs/{created.get_json()['jobId']}", headers=auth).get_json()
        assert job["status"] == "waiting"
    finally:
        app.extensions["bullrq.db"].close()


def test_unreachable_sentinels_are_one_clear_line_without_the_passwords():
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(
        REDIS_SENTINELS=f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}",
        REDIS_SENTINEL_MASTER="bullrq",
        REDIS_PASSWORD="node-secret-1234",
        REDIS_SENTINEL_PASSWORD="sentinel-secret-5678",
    )
    result = run_cli("bullrq", "enqueue", "system.ping", "--queue", "sync", env=env)
    assert result.returncode == 1, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "is unreachable" in result.stderr
    assert "redis+sentinel://:***@127.0.0.1:" in result.stderr
    assert "secret" not in result.stderr


def test_a_replica_wait_without_replicas_times_out_and_says_so(redis_conn):
    started = time.monotonic()
    job = enqueue(redis_conn, "system.ping", {}, {"queue": "sync"}, wait_replicas=1, wait_timeout=0.2)
    assert job.replicas == 0 and time.monotonic() - started >= 0.2  # enqueued all the same, on the master alone
    assert get_queue("sync", redis_conn).job_ids == [job.id]
    assert enqueue(redis_conn, "system.ping", {}, {"queue": "sync"}).replicas is None  # nothing asked, no wait
