"""Running the real handlers of `workers/` end to end: a real worker process per queue, the test's own database.

Use the `handlers` fixture (`pytest_plugins = ["tests.worker_processes", "tests.handler_runs"]`):

    monkeypatch.setenv("SYNC_PRIMARY_URL", http_service.url)   # handler settings: set before the worker starts
    handlers.start("sync")                                      # a worker process serving the queue
    job = handlers.run("sync.manual", {"workspaceId": "w1"})    # enqueue, wait for the end, return the job
    assert job["status"] == "completed", job["error"]
    with handlers.db() as conn: ...                              # the test's database, migrated

Worker processes read REDIS_URL and DATABASE_URL from the environment, which the fixture points at the test's
Redis and database.
"""

from __future__ import annotations

import pytest

from app.runtime.enqueue import enqueue
from app.runtime.jobs import describe_job, fetch_job
from app.store.db import connect
from app.store.migrate import apply_migrations
from tests.waits import wait_status

#: RQ statuses after which a job does nothing more (canceled included)
ENDED = ("finished", "failed", "canceled", "stopped")


class HandlerRuns:
    def __init__(self, workers, redis_conn, database_url: str):
        self.workers = workers
        self.redis = redis_conn
        self.database_url = database_url

    def start(self, *queues: str, name: str | None = None):
        """Start a worker process serving `queues` (after the test set the handlers' environment)."""
        return self.workers.start(*queues, name=name or "+".join(queues))

    def enqueue(self, task_type: str, data: dict | None = None, options: dict | None = None) -> str:
        return enqueue(self.redis, task_type, data, options).id

    def wait(self, job_id: str, *statuses: str, timeout: float = 30) -> dict:
        """Wait until the job reaches one of `statuses` (default: any end); returns it as the API shows it."""
        wait_status(self.redis, job_id, *(statuses or ENDED), timeout=timeout)
        return describe_job(fetch_job(job_id, self.redis))

    def run(self, task_type: str, data: dict | None = None, options: dict | None = None, timeout: float = 30) -> dict:
        """Enqueue a job and wait for its end; returns it as the API shows it (status, result, error, progress)."""
        return self.wait(self.enqueue(task_type, data, options), timeout=timeout)

    def db(self):
        """A connection to the test's database (autocommit, rows as dicts)."""
        return connect(self.database_url, autocommit=True)


@pytest.fixture
def handlers(workers, redis_conn, redis_url, database_url, monkeypatch):
    """Real worker processes running the real handlers against the test's Redis and migrated database."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("DATABASE_URL", database_url)
    apply_migrations(database_url)
    return HandlerRuns(workers, redis_conn, database_url)
