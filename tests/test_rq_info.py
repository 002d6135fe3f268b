"""RQ's own monitor, `rq info`, still reads bullrq's queues and worker registrations (RQ's keys stay RQ's)."""

from __future__ import annotations

import re
import subprocess

import pytest

from app.runtime.enqueue import enqueue
from tests.fixtures import BIN
from tests.handlers import open_gate
from tests.waits import wait_status

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
