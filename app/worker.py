"""The worker runtime: RQ's worker with registry-only task lookup, JSON jobs and per-queue isolation."""

from __future__ import annotations

import logging
import os
import socket

from redis import Redis
from rq.job import JobStatus
from rq.registry import StartedJobRegistry
from rq.worker import Worker, WorkerStatus
from rq.worker_registration import unregister

from app.jobs import SERIALIZER, BullJob, fetch_job, get_queue
from app.tasks import load_tasks
from queues import QUEUES, Isolation

logger = logging.getLogger(__name__)


class BullWorker(Worker):
    """Runs each job in-process or in a forked child, as its queue's isolation asks."""

    def execute_job(self, job, queue):
        if QUEUES[queue.name].isolation is Isolation.FORK:
            return super().execute_job(job, queue)
        # In-process, as RQ's SimpleWorker does: no fork, so a light job costs far less.
        self.prepare_execution(job)
        self.perform_job(job, queue)
        self.set_state(WorkerStatus.IDLE)

    def get_heartbeat_ttl(self, job) -> int:
        if QUEUES[job.origin].isolation is Isolation.FORK:
            return super().get_heartbeat_ttl(job)
        # In-process, no monitor loop refreshes the heartbeat while the job runs: cover its whole timeout.
        return int(job.timeout or self.worker_ttl) + 60


def rq_worker_name(process_name: str) -> str:
    """The RQ worker name of a process: unique per incarnation, so a restart never collides with a dead entry."""
    return f"{process_name}.{socket.gethostname()}.{os.getpid()}"


def build_worker(queue_names: list[str], connection: Redis, process_name: str) -> BullWorker:
    """A worker serving `queue_names` (validated) under the RQ name derived from `process_name`."""
    load_tasks()
    queues = [get_queue(name, connection) for name in queue_names]
    return BullWorker(
        queues,
        name=rq_worker_name(process_name),
        connection=connection,
        job_class=BullJob,
        serializer=SERIALIZER,
    )


def run_worker(queue_names: list[str], connection: Redis, process_name: str, burst: bool = False) -> bool:
    """Work on `queue_names` until told to stop (SIGTERM or SIGINT: warm shutdown) or, with `burst`, until empty."""
    worker = build_worker(queue_names, connection, process_name)
    logger.info("worker %s: serving %s (pid %d)", worker.name, ", ".join(queue_names), os.getpid())
    # with_scheduler: RQ's scheduler thread moves delayed jobs and delayed retries into their queues.
    return worker.work(burst=burst, with_scheduler=True, logging_level=logging.getLogger().level or logging.INFO)


def find_rq_worker(connection: Redis, pid: int, hostname: str | None = None) -> Worker | None:
    """The registered RQ worker of process `pid` on this host, if it registered."""
    hostname = hostname or socket.gethostname()
    for worker in Worker.all(connection=connection, serializer=SERIALIZER):
        if worker.pid == pid and worker.hostname == hostname:
            return worker
    return None


def requeue_job_of_dead_worker(connection: Redis, worker: Worker) -> str | None:
    """Put the job a dead worker was running back at the front of its queue and drop the worker's registration.

    Returns:
        The id of the requeued job, or None when the worker was idle.
    """
    job_id = worker.get_current_job_id()
    with connection.pipeline() as pipe:
        unregister(worker, pipe)
        pipe.delete(worker.key)
        pipe.execute()
    if not job_id:
        return None
    job = fetch_job(job_id, connection)
    if job is None or job.get_status() != JobStatus.STARTED:
        return None
    queue = get_queue(job.origin, connection)
    with connection.pipeline() as pipe:
        pipe.multi()  # one transaction: the job leaves the started registry and enters the queue together
        StartedJobRegistry(queue.name, connection, job_class=BullJob, serializer=SERIALIZER).remove_executions(
            job, pipe
        )
        queue.enqueue_job(job, pipeline=pipe, at_front=True)
        pipe.execute()
    logger.warning("job %s: requeued on %s after its worker %s died", job.id, queue.name, worker.name)
    return job.id
