"""Progress reports from a handler in a real worker process: readable while the job runs and after it ends."""

from __future__ import annotations

import pytest

from app.runtime.enqueue import enqueue
from app.runtime.jobs import describe_job, fetch_job
from tests.fixtures import wait_for
from tests.handlers import open_gate
from tests.waits import status, wait_status

pytestmark = pytest.mark.slow
pytest_plugins = ["tests.worker_processes"]  # the `workers` fixture


def _progress(redis_conn, job_id: str) -> dict | None:
    return fetch_job(job_id, redis_conn).progress


@pytest.mark.parametrize("queue", ["harvest", "documents"])  # inline, and in a forked work horse
def test_progress_is_readable_while_running_and_after_the_end(redis_conn, workers, queue):
    workers.start(queue, name="w-1")
    job = enqueue(redis_conn, "semantics.progress", {"tag": "p"}, {"queue": queue})

    running = wait_for(
        lambda: (p := _progress(redis_conn, job.id)) and p.get("message") == "waiting at the gate" and p,
        message="the half-way report",
    )
    assert status(redis_conn, job.id) == "started"
    assert running["percent"] == 50 and running["processed"] == 5 and running["failed"] == 1
    assert running["updated_at"] > 0
    assert describe_job(fetch_job(job.id, redis_conn))["progress"] == running

    open_gate(redis_conn, "p")
    wait_status(redis_conn, job.id, "finished")
    final = _progress(redis_conn, job.id)
    assert {k: final[k] for k in ("percent", "message", "processed", "failed")} == {
        "percent": 100, "message": "done", "processed": 10, "failed": 2,
    }  # fmt: skip
    assert final["updated_at"] >= running["updated_at"]
