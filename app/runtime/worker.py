"""The worker runtime: RQ's data model and registration, a loop of our own built for few round trips per job.

Per job the loop makes one round trip: a pipeline that records how the last job ended (`finish` script) and takes
the next one (`dequeue` script: pause, concurrency cap, rate limit, priority lanes and the lease, atomically).
Heartbeats, lease renewal, delayed-job promotion, abandoned-job recovery and commands (cancel) run on a timer in
a side thread (`app.runtime.maintenance`), never per job.

Isolation per queue: INLINE runs the handler in this process (fast); FORK runs each job in a child process, so
a crash or a leak in the handler cannot hurt the worker.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import select
import signal
import socket
import sys
import time
import traceback
import uuid
import zlib
from base64 import b64encode
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq.results import Result
from rq.worker import Worker, WorkerStatus
from rq.worker_registration import unregister

from app.connections import SLOT, CommandTemplate
from app.errors import (
    ConfigError,
    InvalidJobError,
    JobCanceledError,
    JobTimeoutError,
    LeaseLostError,
    PermanentFailure,
    RetryLater,
    UnknownTaskError,
)
from app.runtime import progress
from app.runtime.jobs import SERIALIZER, BullJob, RunningJob, declare_queues, get_queue
from app.runtime.leases import LEASE, recover, rq_time
from app.runtime.maintenance import Maintenance
from app.runtime.redis_scripts import SCRIPTS
from app.store.rows import run_row, stream_cap
from app.tasks import get_queue_spec, get_task, load_tasks, queue_keys
from queues import HISTORY_STREAM, JOB_KEY_PREFIX, QUEUES, Isolation, results_key

logger = logging.getLogger(__name__)

#: seconds an idle worker waits for a wake-up before looking at its queues again
IDLE_WAIT = 1.0
#: characters of a traceback kept on a failed job
MAX_TRACEBACK = 20_000
#: seconds a forked job's child gets after its timeout before it is killed
FORK_GRACE = 2
#: longest pause, in seconds, between attempts to reach Redis again
REDIS_RETRY_MAX = 5
#: seconds a worker's Redis connection waits for an answer (its longest blocking command waits IDLE_WAIT)
SOCKET_TIMEOUT = 15


@dataclass
class Outcome:
    """How one run ended, as the `finish` script records it."""

    kind: str  # completed | failed | retried | canceled | lost (the lease was taken back: nothing to record)
    result: Any = None
    error: str | None = None  #: traceback text
    exc: BaseException | None = None
    delay: float = 0  #: retried: seconds until the retry
    retries_left: int | None = None

    @property
    def history_status(self) -> str:
        """The run's status in the history table."""
        return "timed_out" if isinstance(self.exc, JobTimeoutError) else self.kind


class BullWorker(Worker):
    """A worker process serving one or more queues; registered like an RQ worker (`rq info`, `workers status`)."""

    def __init__(self, queues, *args, database_url: str | None = None, **kwargs):
        super().__init__(queues, *args, **kwargs)
        # RQ raised the socket timeout to outlast its 400 s blocking dequeue; ours blocks IDLE_WAIT at most, so a
        # Redis that vanished without a reset (a host lost, a partition) is noticed in seconds, not minutes.
        # Connections made before (a ping at start-up) keep the timeout they were built with: they are dropped.
        pool = self.connection.connection_pool
        pool.connection_kwargs["socket_timeout"] = SOCKET_TIMEOUT
        pool.disconnect()
        pool.reset()
        self.database_url = database_url  #: where this process writes run history (None: it leaves that to others)
        self._keys = [queue_keys(q.name) for q in self.queues]
        dequeue_keys = [self.key]
        dequeue_policy: list[Any] = []
        for keys in self._keys:
            spec = get_queue_spec(keys.name)
            dequeue_keys += [keys.paused, keys.limiter, keys.started, *keys.lanes]
            rate = spec.rate_limit
            dequeue_policy += [
                spec.concurrency or 0,
                rate.max_jobs if rate else 0,
                int(rate.period * 1000) if rate else 0,
                spec.group_concurrency or 0,
                keys.turn,
                keys.name,
            ]
        self._markers = [keys.marker for keys in self._keys]
        # ARGV: Redis' clock (unused), the time in RQ's format, worker, execution id, lease, job key prefix, fields
        fields = RunningJob.FIELDS
        self._dequeue_template = CommandTemplate(SCRIPTS.dequeue.command(dequeue_keys, [
            0, SLOT, self.name, SLOT, LEASE, JOB_KEY_PREFIX, len(fields), *fields, *dequeue_policy,
        ]))  # fmt: skip
        self._exec_prefix = uuid.uuid4().hex[:8]
        self._exec_count = 1
        self._exec_id = f"{self._exec_prefix}1"  #: of the next dequeue; the same again while its reply is lost
        self._stopping = False
        self.current: tuple[RunningJob, str] | None = None  #: the running job and its lease member
        #: the job and lease member this worker holds: from the dequeue until its finish is recorded (renewed all
        #: along, the time spent recording included), or until a renewal finds it gone
        self.lease: tuple[RunningJob, str] | None = None
        self._lease_lost: str | None = None  #: lease member a renewal found gone while its run went on
        self._handler_done = False  #: the forked child's handler has returned (it is recording its outcome)
        self._cancel_requested: str | None = None
        self._pending_cancels: set[str] = set()  #: cancels that arrived before their job was current
        self._interruptible = False
        self._child_pid: int | None = None
        self._maintenance_checked = 0.0  #: time.monotonic() when the side thread was last seen alive

    # -- the loop -----------------------------------------------------------------------------------------------

    def work(self, burst: bool = False, **_ignored) -> bool:
        """Take and run jobs until asked to stop (SIGTERM/SIGINT: after the running job) or, with `burst`, until
        the queues are empty. Returns whether any job ran."""
        self._install_signals()
        self.register_birth()
        self.set_state(WorkerStatus.IDLE)
        maintenance = self._maintenance = Maintenance(self)
        maintenance.start()
        history = None
        if self.database_url and stream_cap():
            from app.store.history import HistoryWriter  # PostgreSQL's driver (10 MB) only where rows are written

            history = HistoryWriter(self.connection, self.database_url, self.name)
            history.start()
        ran = False
        # What start-up made (modules, tasks, this worker) lives as long as the process: out of the collector's way
        # (a full collection walked it in 35-40 ms, a pause a job would wait out) and of a forked child's copies.
        # Collected first, so no garbage of start-up (or of an earlier run in this process) is kept for good.
        gc.collect()
        gc.freeze()
        try:
            reply = self._redis(self._dequeue, self.connection)
            while not self._stopping:
                maintenance = self._check_maintenance()
                if reply[0]:
                    ran = True
                    job, member = self._job_from_reply(reply)
                    outcome = self._execute(job, member)
                    reply = self._redis(self._finish, job, member, outcome, dequeue_next=not self._stopping)
                    continue
                if burst and reply[1] < 0:  # empty (a rate limit only delays: wait for it)
                    self._redis(maintenance.promote_due)
                    reply = self._redis(self._dequeue, self.connection)
                    if not reply[0] and reply[1] < 0:
                        break
                    continue
                reply = self._redis(self._wait_then_dequeue, reply[1])
            if reply and reply[0]:  # taken just as the stop came: give it back untouched
                self._give_back(*self._job_from_reply(reply))
        except _StopNow:
            pass
        finally:
            maintenance.stop()
            if history is not None:
                history.stop()
            try:
                self.register_death()
            except RedisError as exc:  # its registration expires on its own
                logger.warning("worker %s: could not unregister: %s", self.name, exc)
            logger.info("worker %s: stopped", self.name)
        return ran

    def _redis(self, call, *args, **kwargs):
        """Run a Redis step, retrying while Redis is unreachable (a restart, a failover).

        Every step is safe to repeat: a `finish` that already ran finds its lease gone and changes nothing, and a
        `dequeue` asked again with the same execution id returns the job it already took.
        """
        delay = 0.1
        while True:
            try:
                return call(*args, **kwargs)
            except (RedisConnectionError, RedisTimeoutError) as exc:
                if self._stopping and getattr(call, "__func__", None) is not BullWorker._finish:
                    raise _StopNow() from exc
                logger.warning("worker %s: Redis unreachable (%s); retrying in %.1f s", self.name, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, REDIS_RETRY_MAX)

    def _wait_then_dequeue(self, rate_wait_ms: int) -> list:
        """Block on the queues' markers, then take the next job in the same round trip: the dequeue, sent behind
        the blocking pop, runs in Redis the moment the pop returns (work arrived, or the wait ran out)."""
        if self._stopping:
            return [0, -1]
        timeout = IDLE_WAIT if rate_wait_ms < 0 else max(0.01, min(IDLE_WAIT, rate_wait_ms / 1000))

        blpop = ("BLPOP", *self._markers, timeout)
        reply = SCRIPTS.run(self.connection, [blpop, self._dequeue_command(stamped_by_redis=True)])[1]
        self._dequeued_at = time.time()  # taken now, not when the wait began
        return reply

    def _dequeue(self, client) -> list:
        return SCRIPTS.run(client, [self._dequeue_command()])[0]

    def _dequeue_command(self, stamped_by_redis: bool = False) -> tuple:
        now = self._dequeued_at = time.time()
        return self._dequeue_template.fill("" if stamped_by_redis else rq_time(now), self._exec_id)

    def _job_from_reply(self, reply: list) -> tuple[RunningJob, str]:
        queue_number, member, values = reply
        member = member.decode()
        job = RunningJob.from_fields(member.rsplit(":", 1)[0], self._keys[queue_number - 1].name, values)
        job.started = self._dequeued_at
        self.lease = (job, member)
        self._exec_count += 1
        self._exec_id = f"{self._exec_prefix}{self._exec_count}"
        return job, member

    def _check_maintenance(self) -> Maintenance:
        """The side thread, started again (loudly) if it died: without it leases and heartbeats stop. Looked at
        once a second (`is_alive` takes a lock: once a job, it cost a tenth of a no-op job's time)."""
        now = time.monotonic()
        if now < self._maintenance_checked + 1:
            return self._maintenance
        self._maintenance_checked = now
        if not self._maintenance.is_alive() and not self._stopping:
            logger.error("worker %s: the maintenance thread died; starting it again", self.name)
            self._maintenance = Maintenance(self)
            self._maintenance.start()
        return self._maintenance

    # -- running a job ------------------------------------------------------------------------------------------

    def _execute(self, job: RunningJob, member: str) -> Outcome:
        if job.attempt <= job.last_attempt:
            # put back by a tool that does not count tries (rq-dashboard's or `rq requeue`): this run is a new
            # attempt, numbered after the last one, or its history row would overwrite that one's and go uncounted
            bump = job.last_attempt - job.attempt + 1
            self._redis(self.connection.hincrby, job.key, "earlier_attempts", bump)
            job.earlier_attempts += bump
        self.current = (job, member)
        self._cancel_requested = job.id if job.cancel_requested or job.id in self._pending_cancels else None
        self._pending_cancels.discard(job.id)
        started = time.monotonic()
        try:
            if QUEUES[job.origin].isolation is Isolation.FORK:
                outcome = self._run_forked(job, member)
            else:
                outcome = self._run_inline(job)
        finally:
            self.current = None
        job.duration = time.monotonic() - started
        if self._lease_lost == member:  # another worker holds the job now: its run's outcome is the one
            return Outcome("lost")
        return outcome

    def _run_inline(self, job: RunningJob) -> Outcome:
        progress._bind(self.connection, job)
        try:
            if job.problem:
                raise InvalidJobError(job.problem)
            task = get_task(job.func_name)
            kwargs = job.kwargs
            signal.setitimer(signal.ITIMER_REAL, job.timeout or get_queue_spec(job.origin).timeout)
            self._interruptible = True
            try:
                if self._cancel_requested == job.id:
                    raise JobCanceledError()
                if self.current and self._lease_lost == self.current[1]:
                    raise LeaseLostError()
                result = task.func(**kwargs)
            finally:
                self._interruptible = False
                signal.setitimer(signal.ITIMER_REAL, 0)
            return Outcome("completed", result=result)
        except JobCanceledError as exc:
            return Outcome("canceled", error="canceled while running", exc=exc)
        except LeaseLostError:
            return Outcome("lost")
        except (Exception, JobTimeoutError) as exc:  # every handler error is recorded on the job, never swallowed
            return self._failure(job, exc)
        finally:
            job.progress = progress._unbind()

    def _failure(self, job: RunningJob, exc: BaseException) -> Outcome:
        error = "".join(traceback.format_exception(exc))[-MAX_TRACEBACK:]
        # a bad setting (ConfigError) is not fixed by trying again: the run fails at once, naming the variable
        permanent = isinstance(exc, PermanentFailure | UnknownTaskError | InvalidJobError | ConfigError)
        left = job.retries_left or 0
        if permanent or left <= 0:
            logger.warning("job %s: %s failed for good (attempt %d): %r", job.id, job.func_name, job.attempt, exc)
            return Outcome("failed", error=error, exc=exc)
        if isinstance(exc, RetryLater):
            delay = exc.delay
        else:
            intervals = job.retry_intervals or [0]
            delay = intervals[min(job.attempts - 1 - left, len(intervals) - 1)]
        logger.info("job %s: attempt %d failed (%r), retry in %s s", job.id, job.attempt, exc, delay)
        return Outcome("retried", error=error, exc=exc, delay=delay, retries_left=left - 1)

    def _run_forked(self, job: RunningJob, member: str) -> Outcome | None:
        parent = os.getpid()
        done_r, done_w = os.pipe()  # the child writes a byte once its handler has returned
        self._handler_done = False
        pid = os.fork()
        if pid == 0:  # the child: run, record the outcome itself (through Redis blips), exit
            code = 1
            try:
                os.close(done_r)
                _die_with_parent(parent)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
                outcome = self._run_inline(job)
                os.write(done_w, b"1")
                if outcome.kind != "lost":
                    self._redis(self._finish, job, member, outcome, dequeue_next=False)
                code = 0
            finally:
                os._exit(code)
        os.close(done_w)
        self._child_pid = pid
        deadline = time.monotonic() + (job.timeout or get_queue_spec(job.origin).timeout) + FORK_GRACE
        try:
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                if not self._handler_done and select.select([done_r], [], [], 0)[0]:
                    self._handler_done = bool(os.read(done_r, 1))
                if self._handler_done:  # recording: neither a timeout nor a cancel applies any more
                    time.sleep(0.005)
                    continue
                lost = self._lease_lost == member
                if lost or self._cancel_requested == job.id or time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    if lost:
                        return Outcome("lost")
                    if self._cancel_requested == job.id:
                        return Outcome("canceled", error="canceled while running", exc=JobCanceledError())
                    return self._failure(job, JobTimeoutError(f"job exceeded its timeout of {job.timeout} s"))
                time.sleep(0.005)
        finally:
            self._child_pid = None
            os.close(done_r)
        if os.waitstatus_to_exitcode(status) == 0:
            return None  # the child recorded the outcome
        return self._failure(job, RuntimeError(f"work horse died (exit status {os.waitstatus_to_exitcode(status)})"))

    # -- recording the outcome ----------------------------------------------------------------------------------

    def _finish(self, job: RunningJob, member: str, outcome: Outcome | None, dequeue_next: bool) -> list:
        """Record `outcome` and, with `dequeue_next`, take the next job in the same round trip."""
        if outcome is None:  # recorded by the forked child
            self._release(member)
            return self._dequeue(self.connection) if dequeue_next else [0, -1]
        if outcome.kind == "lost":  # not this run's to record: the job is another worker's now
            logger.warning("job %s: its lease was taken back while it ran; run stopped, nothing recorded", job.id)
            with self.connection.pipeline(transaction=False) as pipe:
                pipe.hset(self.key, "state", WorkerStatus.IDLE.value)
                pipe.hdel(self.key, "current_job", "lease", "lease_set")  # deleted, as RQ does: "" reads as an id
                pipe.execute()
            self._release(member)
            return self._dequeue(self.connection) if dequeue_next else [0, -1]
        keys = queue_keys(job.origin)
        now = time.time()
        job_fields: list[Any] = ["last_attempt", job.attempt]
        stream = ["worker_name", self.name, "execution_id", member.rsplit(":", 1)[1]]
        if outcome.kind == "completed":
            target, keep = keys.finished, job.result_ttl if job.result_ttl is not None else 500
            stream += ["type", Result.Type.SUCCESSFUL.value, "return_value", _b64_json(outcome.result)]
        else:
            target = {"failed": keys.failed, "canceled": keys.canceled, "retried": keys.scheduled}[outcome.kind]
            keep = outcome.delay if outcome.kind == "retried" else job.failure_ttl or 7 * 24 * 3600
            result_type = {"failed": Result.Type.FAILED, "canceled": Result.Type.STOPPED}.get(
                outcome.kind, Result.Type.RETRIED
            )
            stream += ["type", result_type.value, "exc_string", b64encode(zlib.compress(outcome.error.encode()))]
            job_fields += ["exc_info", outcome.error]
            if outcome.kind == "retried":
                job_fields += ["retries_left", outcome.retries_left]
        cap = stream_cap()
        row = self._history_row(job, outcome, now) if cap else ""
        args = [outcome.kind, member, job.id, now, rq_time(now), keep, round(job.duration, 6), row, cap]
        args += [len(job_fields) // 2, *job_fields, *stream]
        finish_keys = [
            job.key, keys.started, self.key, results_key(job.id), keys.stats, target,
            keys.lane(job.priority), keys.marker, HISTORY_STREAM,
        ]  # fmt: skip
        calls = [SCRIPTS.finish.command(finish_keys, args)]
        if dequeue_next:
            calls.append(self._dequeue_command())
        replies = SCRIPTS.run(self.connection, calls)
        recorded, reply = replies[0], (replies[1] if dequeue_next else [0, -1])
        self._release(member)
        if recorded == 0:
            logger.warning("job %s: its lease was taken back before it ended; outcome %s not recorded", job.id,
                           outcome.kind)
        elif recorded == -1:
            logger.warning("job %s: gone from Redis (flushed or deleted) while it ran; outcome %s kept in the "
                           "history only", job.id, outcome.kind)
        return reply

    def _release(self, member: str) -> None:
        if self.lease is not None and self.lease[1] == member:
            self.lease = None
        if self._lease_lost == member:
            self._lease_lost = None

    def _history_row(self, job: RunningJob, outcome: Outcome, now: float) -> str:
        processed = failed = None
        if job.progress:
            processed, failed = job.progress.get("processed"), job.progress.get("failed")
        return run_row(
            job_id=job.id,
            attempt=job.attempt,
            queue=job.origin,
            task=job.func_name,
            status=outcome.history_status,
            worker=self.name,
            schedule_id=job.schedule_id,
            schedule_slot=job.schedule_slot,
            enqueued_at=job.enqueued_at,
            started_at=job.started,
            ended_at=now,
            items_processed=processed,
            items_failed=failed,
            error=outcome.exc,
            traceback=outcome.error,
            result=outcome.result,
        )

    def _give_back(self, job: RunningJob, member: str) -> None:
        """Return a job taken but not started (the worker is stopping) to the front of its lane."""
        recover(self.connection, job.origin, member=member, consume_attempt=False,
                reason="worker stopped before the start")
        self._release(member)

    # -- signals ------------------------------------------------------------------------------------------------

    def _install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGALRM, self._on_timeout)
        signal.signal(signal.SIGUSR1, self._on_cancel)

    def _on_stop_signal(self, signum, frame) -> None:
        if self._stopping:  # a second signal: stop now; the running job is recovered from its lease
            logger.warning("worker %s: cold shutdown", self.name)
            if self._child_pid:
                os.kill(self._child_pid, signal.SIGKILL)
            raise _StopNow()
        self._stopping = True
        logger.info("worker %s: warm shutdown requested (%s)", self.name, signal.Signals(signum).name)
        # not raised into an idle wait: the dequeue sent behind it may have taken a job whose reply is on its way.
        # The wait ends within IDLE_WAIT, and a job taken meanwhile is given back untouched.

    def _on_timeout(self, signum, frame) -> None:
        if self._interruptible and self.current:
            raise JobTimeoutError(f"job exceeded its timeout of {self.current[0].timeout} s")

    def _on_cancel(self, signum, frame) -> None:
        if self._interruptible and self.current and self._lease_lost == self.current[1]:
            raise LeaseLostError()
        if self._interruptible and self.current and self._cancel_requested == self.current[0].id:
            raise JobCanceledError()

    def lease_lost(self, member: str) -> None:
        """From the maintenance thread: a renewal found lease `member` gone (the job was taken back for another
        worker). Its run stops at once (inline: interrupted; forked: the child is killed) and records nothing; a
        run whose handler already returned just finds its lease gone when it records."""
        if self.lease is None or self.lease[1] != member:
            return
        logger.warning("job %s: this worker lost its lease (taken back for another worker); stopping its run",
                       self.lease[0].id)
        self._lease_lost = member
        self.lease = None
        if self.current and self.current[1] == member and not self._child_pid:
            os.kill(os.getpid(), signal.SIGUSR1)  # the handler raises inside the job, in the main thread

    def register_birth(self) -> None:
        """Register; an entry under this very name (same host, same pid: a container restarted after its worker
        was killed) belongs to a dead process: its job is taken back at once and the entry replaced."""
        old = self.connection.hgetall(self.key)
        if old and b"death" not in old:
            self._bury_previous(old)
        super().register_birth()
        declare_queues(self.connection)  # RQ's tools list every queue from the first start, not from its first job

    def _bury_previous(self, old: dict) -> None:
        taken = take_back_lease(self.connection, old.get(b"lease"), old.get(b"lease_set"),
                                reason=f"abandoned: its worker {self.name} died (restarted under the same name)")
        logger.warning("worker %s: an earlier process of this name died without unregistering; replacing its "
                       "entry%s", self.name, "".join(f"; its job {j} {o}" for j, o in taken))
        with self.connection.pipeline() as pipe:
            unregister(self, pipe)
            pipe.delete(self.key)
            pipe.execute()

    def register_again(self) -> None:
        """From the maintenance thread: this worker's registration is gone (Redis was flushed, or restarted
        empty): register again, so `rq info`, `workers status`, stats and health see it."""
        logger.warning("worker %s: its registration was gone from Redis; registering again", self.name)
        self.connection.delete(self.key)
        super().register_birth()
        declare_queues(self.connection)
        lease = self.lease
        self.connection.hset(self.key, "state", (WorkerStatus.BUSY if lease else WorkerStatus.IDLE).value)
        if lease:  # the fields the dequeue script writes, so finishing the run resets them as usual
            job, member = lease
            self.connection.hset(self.key, mapping={"current_job": job.id, "lease": member,
                                                    "lease_set": queue_keys(job.origin).started})

    def request_cancel(self, job_id: str) -> bool:
        """From the maintenance thread: stop `job_id` if it is the running job. Returns whether it is; a cancel
        for a job this worker has taken but not started yet is kept for when it starts."""
        if not self.current or self.current[0].id != job_id:
            self._pending_cancels.add(job_id)
            return False
        self._cancel_requested = job_id
        if not self._child_pid:
            os.kill(os.getpid(), signal.SIGUSR1)  # the handler raises inside the job, in the main thread
        return True


def _die_with_parent(parent: int) -> None:
    """In a forked child: be killed when the worker dies, so a job never runs on beside its own retry (Linux)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the worker died before the request took effect
        os._exit(1)


#: prctl option: the signal a process gets when its parent dies
PR_SET_PDEATHSIG = 1


class _StopNow(BaseException):
    """Unwinds the loop at once (idle worker asked to stop, or a second stop signal)."""


def _b64_json(value: Any) -> str:
    try:
        return b64encode(SERIALIZER.dumps(value)).decode()
    except (TypeError, ValueError):
        return b64encode(SERIALIZER.dumps(f"<unserializable {type(value).__name__}>")).decode()


def worker_processes(queue_names: list[str]) -> list[tuple[str, str]]:
    """(process name, queue) of the worker processes `queues.py` asks for: `<queue>-<n>`, n from 1."""
    return [(f"{q}-{n}", q) for q in queue_names for n in range(1, get_queue_spec(q).processes + 1)]


def worker_command(queue: str, process_name: str) -> list[str]:
    """The command that runs one worker process of `queue` in the foreground."""
    return [sys.executable, "-m", "app.cli.workers", "run", queue, "--name", process_name]


def rq_worker_name(process_name: str) -> str:
    """The RQ worker name of a process: `<process>.<host>.<pid>`. In a container (pid 1, same hostname at every
    restart) it repeats: a new process finding a live-looking entry of its own name replaces it (`register_birth`)."""
    return f"{process_name}.{socket.gethostname()}.{os.getpid()}"


def build_worker(
    queue_names: list[str], connection: Redis, process_name: str, database_url: str | None = None
) -> BullWorker:
    """A worker serving `queue_names` (validated) under the RQ name derived from `process_name`; with a
    `database_url` it also writes run history to PostgreSQL."""
    load_tasks()
    queues = [get_queue(name, connection) for name in queue_names]
    return BullWorker(
        queues,
        name=rq_worker_name(process_name),
        connection=connection,
        job_class=BullJob,
        serializer=SERIALIZER,
        database_url=database_url,
    )


def run_worker(
    queue_names: list[str],
    connection: Redis,
    process_name: str,
    burst: bool = False,
    database_url: str | None = None,
) -> bool:
    """Work on `queue_names` until told to stop (SIGTERM or SIGINT: warm shutdown) or, with `burst`, until empty."""
    worker = build_worker(queue_names, connection, process_name, database_url)
    logger.info("worker %s: serving %s (pid %d)", worker.name, ", ".join(queue_names), os.getpid())
    return worker.work(burst=burst)


def find_rq_worker(connection: Redis, pid: int, hostname: str | None = None) -> Worker | None:
    """The registered RQ worker of process `pid` on this host, if it registered."""
    hostname = hostname or socket.gethostname()
    for worker in Worker.all(connection=connection, serializer=SERIALIZER):
        if worker.pid == pid and worker.hostname == hostname:
            return worker
    return None


def take_back_lease(
    connection: Redis, member: bytes | None, started: bytes | None, reason: str, consume_attempt: bool = True
) -> list[tuple[str, str]]:
    """Recover exactly the lease `member` of the started registry `started`: the fields `lease` and `lease_set`
    the dequeue script writes into a worker's hash. Nothing when either is unknown (an idle worker, or one whose
    lease will expire and be recovered then); never a lease another worker holds."""
    queue = next((keys.name for keys in map(queue_keys, QUEUES) if started and keys.started == started.decode()),
                 None)
    if not member or queue is None:
        return []
    return recover(connection, queue, member=member.decode(), consume_attempt=consume_attempt, reason=reason)


def requeue_job_of_dead_worker(connection: Redis, worker: Worker, consume_attempt: bool = True) -> str | None:
    """Take back the job a dead worker was running (at once, without waiting for its lease to run out) and drop
    the worker's registration.

    Only that worker's own lease is taken back: a job recovered meanwhile and running on a live worker is left
    alone. The lost run counts as an attempt (`consume_attempt`), so a job that kills its worker ends failed once
    its attempts are spent instead of looping; a worker killed because it was asked to stop passes False.

    Returns:
        The id of the job taken back, or None when the worker was idle or its job is elsewhere by now.
    """
    member, started = connection.hmget(worker.key, "lease", "lease_set")  # the lease the dequeue script handed it
    with connection.pipeline() as pipe:
        unregister(worker, pipe)
        pipe.delete(worker.key)
        pipe.execute()
    taken = take_back_lease(
        connection, member, started, consume_attempt=consume_attempt,
        reason=f"abandoned: its worker {worker.name} {'died' if consume_attempt else 'was stopped'}",
    )  # fmt: skip
    for taken_id, outcome in taken:
        logger.warning("job %s: %s after its worker %s died", taken_id, outcome, worker.name)
    return taken[0][0] if taken else None
