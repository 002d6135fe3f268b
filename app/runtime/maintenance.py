"""A worker's side thread: everything that runs on a timer rather than per job.

- renews the lease the worker holds (so a live job is never taken for abandoned), tells the worker when it was
  lost (the run then stops), renews the worker's heartbeat and registers the worker again if Redis lost it;
- moves due delayed jobs and delayed retries into their lanes;
- recovers jobs whose lease expired (their worker died) and retries them per policy;
- looks again at jobs that have waited deferred a while (app.runtime.flows: a parent or batch whose end the job
  path could not see);
- carries out commands sent to this worker (`cancel <job id>`).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError
from rq.worker_registration import REDIS_WORKER_KEYS

from app.runtime.jobs import RunningJob
from app.runtime.leases import LEASE, recover, rq_time
from app.runtime.redis_scripts import SCRIPTS
from app.store.rows import run_row, stream_cap
from app.tasks import queue_keys
from queues import HISTORY_STREAM, JOB_KEY_PREFIX, QueueKeys, worker_commands_key

logger = logging.getLogger(__name__)

#: seconds between lease renewals and heartbeats
RENEW_INTERVAL = 5.0
#: seconds between looks for due delayed jobs
PROMOTE_INTERVAL = 0.25
#: seconds between looks for expired leases
RECOVER_INTERVAL = 2.0
#: seconds between looks at the deferred jobs; and how long one waits between two looks at it
RECHECK_INTERVAL = 30.0
RECHECK_AFTER = 60
#: most deferred jobs looked at per queue per look
RECHECK_BATCH = 100
#: seconds after which a batch still being created is taken for abandoned by its creator, and sealed
ABANDONED_BATCH_AFTER = 300
#: seconds the thread blocks waiting for a command; bounds how late the timers fire
COMMAND_WAIT = 0.2
#: seconds a run goes on before it gets a "started" history row
STARTED_ROW_AFTER = 1.0
#: most delayed jobs moved per queue per look
PROMOTE_BATCH = 500


class MaintainedWorker(Protocol):
    """What the thread needs of the worker it serves (`app.runtime.worker.BullWorker`)."""

    name: str
    connection: Redis
    current: tuple[RunningJob, str] | None  #: the running job and its lease member
    _keys: list[QueueKeys]

    def heartbeat(self, pipeline: Pipeline) -> None: ...

    def request_cancel(self, job_id: str) -> bool: ...


class Maintenance(threading.Thread):
    """The timer thread of one worker process."""

    def __init__(self, worker: MaintainedWorker):
        super().__init__(name=f"maintenance-{worker.name}", daemon=True)
        self.worker = worker
        self.connection = worker.connection
        self.commands_key = worker_commands_key(worker.name)
        self._stopped = threading.Event()
        self._started_recorded: str | None = None  #: lease member of the run whose "started" row was written

    def stop(self) -> None:
        self._stopped.set()
        if self.is_alive():
            self.join(timeout=COMMAND_WAIT + 5)

    def run(self) -> None:
        next_renew = next_promote = next_recover = next_recheck = 0.0
        while not self._stopped.is_set():
            try:
                now = time.monotonic()
                if now >= next_renew:
                    self.renew()
                    next_renew = now + RENEW_INTERVAL
                if now >= next_promote:
                    self.promote_due()
                    next_promote = now + PROMOTE_INTERVAL
                self.record_started()
                if now >= next_recover:
                    self.recover_abandoned()
                    next_recover = now + RECOVER_INTERVAL
                if now >= next_recheck:
                    self.recheck_deferred()
                    next_recheck = now + RECHECK_INTERVAL
                command = self.connection.blpop([self.commands_key], timeout=COMMAND_WAIT)
                if command:
                    self.handle(command[1].decode())
            except RedisError as exc:
                logger.warning("worker %s: maintenance skipped a beat: %s", self.worker.name, exc)
                self._stopped.wait(1)
            except Exception:  # a bug or bad data must not end the thread: leases and heartbeats would stop
                logger.exception("worker %s: maintenance failed; going on", self.worker.name)
                self._stopped.wait(1)

    def renew(self) -> None:
        """Extend the lease the worker holds and its registration; tell the worker when the lease is gone, and
        register it again when its registration is."""
        now = time.time()
        lease = self.worker.lease

        def fill(pipe):
            if lease is not None:
                job, member = lease
                SCRIPTS.renew(pipe, [queue_keys(job.origin).started, job.key], [member, LEASE, rq_time(now)])
            self.worker.heartbeat(pipeline=pipe)
            pipe.sismember(REDIS_WORKER_KEYS, self.worker.key)

        replies = SCRIPTS.execute(self.connection, fill)
        if lease is not None and replies[0] == 0:
            if self.connection.exists(lease[0].key):
                self.worker.lease_lost(lease[1])
            # else the job is gone (Redis flushed): nobody else can run it; its run goes on and records its row
        if not replies[-1]:
            self.worker.register_again()

    def record_started(self) -> None:
        """Give a run that has gone on for a while its "started" history row (short runs get only their final one)."""
        current = self.worker.current
        if current is None or current[1] == self._started_recorded or not stream_cap():
            return
        job, member = current
        if time.time() - job.started < STARTED_ROW_AFTER:
            return
        row = run_row(
            job_id=job.id, attempt=job.attempt, queue=job.origin, task=job.func_name, status="started",
            worker=self.worker.name, schedule_id=job.schedule_id, schedule_slot=job.schedule_slot,
            enqueued_at=job.enqueued_at, started_at=job.started,
        )  # fmt: skip
        self.connection.xadd(HISTORY_STREAM, {"row": row}, maxlen=stream_cap(), approximate=True)
        self._started_recorded = member

    def promote_due(self) -> int:
        """Move due delayed jobs of the worker's queues into their lanes; returns how many moved."""
        now = time.time()
        moved = 0
        for keys in self.worker._keys:
            moved += SCRIPTS.promote(
                self.connection,
                [keys.scheduled, keys.marker, *keys.lanes], [now, rq_time(now), JOB_KEY_PREFIX, PROMOTE_BATCH]
            )
        return moved

    def recover_abandoned(self) -> None:
        for keys in self.worker._keys:
            for job_id, outcome in recover(self.connection, keys.name):
                logger.warning("job %s: abandoned by a dead worker on %s, %s", job_id, keys.name, outcome)

    def recheck_deferred(self) -> int:
        """Work out again the deferred jobs of the worker's queues that have waited a while; returns how many moved
        on (released, or ended because a parent is gone)."""
        return sum(
            SCRIPTS.recheck(self.connection, [keys.deferred],
                            [RECHECK_BATCH, RECHECK_AFTER, stream_cap(), ABANDONED_BATCH_AFTER])
            for keys in self.worker._keys
        )  # fmt: skip

    def handle(self, command: str) -> None:
        verb, _, argument = command.partition(" ")
        if verb == "cancel":
            if self.worker.request_cancel(argument):
                logger.info("job %s: cancel requested", argument)
        else:
            logger.warning("worker %s: unknown command %r", self.worker.name, command)
