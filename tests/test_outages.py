"""Redis going away under real worker processes, on a redis-server of the test's own (stopped and started again
from its append-only file, like a restart in production): finished runs are recorded once, never taken for
abandoned and rerun; a forked work horse records its outcome through a blip; a dequeue reply lost on the network
does not leave a lease nobody runs.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from app.connections import redis_from_url
from app.local.servers import EmbeddedRedis, free_port
from app.runtime.enqueue import enqueue
from app.runtime.jobs import fetch_job
from app.runtime.leases import LEASE
from app.runtime.stats import queue_stats
from tests.fixtures import wait_for
from tests.handlers import open_gate, runs
from tests.waits import status, wait_status
from tests.worker_processes import WorkerProcesses

pytestmark = pytest.mark.slow


@pytest.fixture
def own_redis(tmp_path, redis_url):  # redis_url: only where the suite's servers run (it skips or fails otherwise)
    server = EmbeddedRedis(tmp_path / "own-redis", port=free_port(), persistent=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_conn(own_redis):
    client = redis_from_url(own_redis.url)
    yield client
    client.close()


@pytest.fixture
def own_workers(own_redis, own_conn, tmp_path):
    logs = tmp_path / "worker-logs"
    logs.mkdir()
    pool = WorkerProcesses(own_conn, logs, REDIS_URL=own_redis.url)
    yield pool
    pool.close()


def _gated_jobs(conn, tags_by_queue: dict[str, str], after: float) -> dict[str, str]:
    """One `semantics.gated` job per queue (one attempt only: a rerun would fail it); returns tag -> job id."""
    return {
        tag: enqueue(conn, "semantics.gated", {"tag": tag, "wait": 120, "after": after},
                     {"queue": queue, "attempts": 1}).id
        for queue, tag in tags_by_queue.items()
    }  # fmt: skip


def _finish_under_outage(own_redis, conn, jobs: dict[str, str], down: float) -> None:
    """Open every gate, take Redis down while the handlers are returning (after their last Redis call), keep it
    down `down` seconds, start it again."""
    for tag in jobs:
        open_gate(conn, tag)
    wait_for(lambda: all(runs(conn, tag, event="end") for tag in jobs), message="the handlers to pass their gates")
    own_redis.stop()
    time.sleep(down)
    own_redis.start()


def test_redis_down_longer_than_the_lease_reruns_no_finished_job(own_redis, own_conn, own_workers):
    for name, queue in {"h-1": "harvest", "h-2": "harvest", "d-1": "documents", "d-2": "documents"}.items():
        own_workers.start(queue, name=name, wait=False)
    for name in ("h-1", "h-2", "d-1", "d-2"):
        own_workers.wait_registered(name)
    jobs = _gated_jobs(own_conn, {"harvest": "inline", "documents": "forked"}, after=2)
    for tag, job_id in jobs.items():
        wait_status(own_conn, job_id, "started")
        wait_for(lambda tag=tag: runs(own_conn, tag), message="the handler to start")

    _finish_under_outage(own_redis, own_conn, jobs, down=LEASE + 3)

    for tag, job_id in jobs.items():
        assert wait_status(own_conn, job_id, "finished", "failed", timeout=LEASE + 30) == "finished", tag
        assert len(runs(own_conn, tag)) == 1, f"{tag}: run again after the outage"
        assert fetch_job(job_id, own_conn).return_value() == "opened"
    for queue in ("harvest", "documents"):
        totals = queue_stats(own_conn)["queues"][queue]["totals"]
        assert "abandoned" not in totals and totals.get("completed") == 1, (queue, totals)
    time.sleep(3)  # a late recovery would show now
    assert [status(own_conn, job_id) for job_id in jobs.values()] == ["finished", "finished"]
    assert all(own_workers.alive(name) for name in ("h-1", "h-2", "d-1", "d-2"))


def test_a_forked_work_horse_records_its_outcome_through_a_redis_blip(own_redis, own_conn, own_workers):
    own_workers.start("documents", name="d-1")
    jobs = _gated_jobs(own_conn, {"documents": "blip"}, after=1)
    wait_for(lambda: runs(own_conn, "blip"), message="the handler to start")

    _finish_under_outage(own_redis, own_conn, jobs, down=3)

    (job_id,) = jobs.values()
    assert wait_status(own_conn, job_id, "finished", "failed", timeout=60) == "finished"
    assert fetch_job(job_id, own_conn).return_value() == "opened"
    assert len(runs(own_conn, "blip")) == 1


class ReplyDropper:
    """A TCP proxy in front of a redis-server that closes the first connection whose reply carries a job taken by
    the dequeue script (`*3` then the queue number): the script ran in Redis, the worker never hears of it."""

    def __init__(self, port: int):
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.dropped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, replies: bool) -> None:
        try:
            while data := source.recv(65536):
                if replies and not self.dropped.is_set() and data.startswith(b"*3\r\n:"):
                    self.dropped.set()
                    break
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self.listener.close()


def test_a_lost_dequeue_reply_runs_the_job_instead_of_abandoning_it(own_redis, own_conn, tmp_path):
    proxy = ReplyDropper(own_redis.port)
    logs = tmp_path / "proxied-logs"
    logs.mkdir()
    pool = WorkerProcesses(own_conn, logs, REDIS_URL=f"redis://127.0.0.1:{proxy.port}/0")
    try:
        pool.start("harvest", name="h-1")
        job = enqueue(own_conn, "semantics.record", {"tag": "lost-reply"}, {"queue": "harvest", "attempts": 1})
        wait_for(proxy.dropped.is_set, message="the dequeue reply to be dropped")
        assert wait_status(own_conn, job.id, "finished", "failed", timeout=LEASE + 40) == "finished"
        assert len(runs(own_conn, "lost-reply")) == 1
        assert "abandoned" not in queue_stats(own_conn)["queues"]["harvest"]["totals"]
    finally:
        pool.close()
        proxy.close()
