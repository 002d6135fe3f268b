"""The scheduler process: fires the entries of schedules.yaml on time; one process active, others on standby.

The active process holds a short Redis lease (`bullrq:scheduler:leader`), renewed every `RENEW` seconds; when it
dies, a standby takes over within `LEADER_TTL` + `RENEW` seconds. The lease only decides who does the work:
exactly-once per slot comes from the compare-and-set in `schedule_store.fire`, so two processes that both
believe they lead (Redis flushed, a network split) still fire a slot once. While active it also runs
rq-scheduler's loop, the engine behind jobs scheduled through rq-scheduler's own API.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
from redis import Redis
from redis.exceptions import RedisError

from app.leadership import Leadership
from app.runtime.jobs import BullJob
from app.scheduling import schedule_store
from app.scheduling.schedules import ScheduleEntry
from app.store.db import KeptConnection
from app.store.migrate import apply_migrations
from queues import SCHEDULER_LEADER_KEY, SCHEDULER_TICK_KEY

logger = logging.getLogger(__name__)

#: seconds between looks at the schedule (bounds how late a slot fires)
TICK = 0.2
#: seconds the leader's lease lasts, and between its renewals
LEADER_TTL = 5.0
RENEW = 1.0
#: a slot more than this many seconds in the past was missed (everything was down), not merely due
MISSED_AFTER = 30.0
#: seconds past max_runtime before a run its worker did not stop is declared stuck (the worker's own timeout, a
#: forked child's kill grace and a lease's recovery come first)
STUCK_GRACE = 30.0
#: seconds without a completed tick after which the active scheduler counts as stuck (health checks)
STALE_AFTER = 30.0
#: seconds the last-tick time is kept in Redis
TICK_KEY_TTL = 24 * 3600

class Scheduler:
    """One scheduler process."""

    def __init__(self, redis: Redis, database_url: str, entries: list[ScheduleEntry], clock=None):
        self.redis = redis
        self.database_url = database_url
        self.entries = entries
        self.identity = f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
        self.clock = clock or (lambda: datetime.now(UTC))
        self.lead = Leadership(redis, SCHEDULER_LEADER_KEY, self.identity, int(LEADER_TTL * 1000))
        self._stop = threading.Event()
        self._kept = KeptConnection(database_url)
        self._lease_checked = 0.0
        self._rq_scheduler = None
        self._tick_recorded = 0.0

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Lead or stand by until `stop()`; survives Redis and PostgreSQL outages."""
        logger.info("scheduler %s: %d entries declared", self.identity, len(self.entries))
        while not self._stop.is_set():
            try:
                if self._holds_lease():
                    self.tick()
                    self._record_tick()
            except (RedisError, psycopg.Error) as exc:
                logger.warning("scheduler %s: %s; retrying", self.identity, str(exc).strip().splitlines()[0])
                self._kept.drop()
                self._stop.wait(1)
            self._stop.wait(TICK)
        self._release()
        logger.info("scheduler %s: stopped", self.identity)

    def _record_tick(self) -> None:
        """Publish when the last tick completed (at most once per RENEW), for health checks and /metrics."""
        now = time.monotonic()
        if now - self._tick_recorded >= RENEW:
            self.redis.set(SCHEDULER_TICK_KEY, f"{time.time():.3f}", ex=TICK_KEY_TTL)
            self._tick_recorded = now

    # -- leadership ------------------------------------------------------------------------------------------

    def _holds_lease(self) -> bool:
        now = time.monotonic()
        if now - self._lease_checked < RENEW:
            return self.lead.leading
        self._lease_checked = now
        change = self.lead.hold()
        if change == "taken":
            logger.info("scheduler %s: now active", self.identity)
            self._on_lead()
        elif change == "lost":
            logger.warning("scheduler %s: lost the lead", self.identity)
        return self.lead.leading

    def _release(self) -> None:
        """Hand the lead over at once on a clean stop, rather than after the lease runs out."""
        self.lead.release()
        self._kept.drop()

    def _on_lead(self) -> None:
        """Taking over: the schema is in place and the table matches schedules.yaml."""
        apply_migrations(self.database_url)
        schedule_store.sync_declared(self._db(), self.entries, self.clock())

    # -- work ------------------------------------------------------------------------------------------------

    def _db(self) -> psycopg.Connection:
        return self._kept.get()

    def tick(self) -> None:
        """Fire every entry that is due; bring running entries' state up to date."""
        conn = self._db()
        now = self.clock()
        for row in schedule_store.list_schedules(conn):
            row = schedule_store.refresh_status(conn, self.redis, row)
            if not row["effective_enabled"] or row["next_run_at"] is None or row["next_run_at"] > now:
                continue
            self._due(conn, row, now)
        self._rq_scheduler_tick()

    def _due(self, conn: psycopg.Connection, row: dict, now: datetime) -> None:
        slot = row["next_run_at"]
        cron = schedule_store.cron_of(row)
        recent = now - slot <= timedelta(seconds=MISSED_AFTER)
        # A slot only just due (a takeover, a busy tick) is followed by the next one, so none is lost; after a
        # downtime the missed slots collapse into this one run and the schedule resumes from now.
        next_run_at = cron.next_after(slot if recent else now)
        if row["last_status"] == "running":
            # The run's own timeout (max_runtime, from its start) stops it; past that and a grace, its worker did
            # not, and the entry is freed. A run still waiting has not started its clock: its entry waits for it,
            # so an entry never has more than one job waiting (no backlog).
            started = row.get("job_started_at")
            if started is not None and now - started > timedelta(seconds=row["max_runtime"] + STUCK_GRACE):
                schedule_store.mark_stuck(conn, self.redis, row)
            else:
                going = "still waiting to start" if row.get("job_state") in ("waiting", "delayed") else "still going"
                schedule_store.skip(conn, row, slot, next_run_at, f"the previous run is {going}")
                return
        if not recent and not row["catch_up"]:
            schedule_store.skip(conn, row, slot, next_run_at, "missed while down, and catch_up is off")
            return
        schedule_store.fire(conn, self.redis, row, slot, next_run_at, now)

    def _rq_scheduler_tick(self) -> None:
        from rq_scheduler import Scheduler as RQScheduler

        if self._rq_scheduler is None:
            self._rq_scheduler = RQScheduler(connection=self.redis, job_class=BullJob, name=self.identity)
        self._rq_scheduler.enqueue_jobs()


def liveness(redis: Redis) -> dict:
    """Whether a scheduler is active: the leader holding the lease, and how long ago it last completed a tick.

    Returns:
        {"ok", "leader" (identity or None), "last_tick_age" (seconds or None), "problem" (None when ok)}.

    Raises:
        RedisError: Redis did not answer.
    """
    with redis.pipeline(transaction=False) as pipe:
        pipe.get(SCHEDULER_LEADER_KEY)
        pipe.get(SCHEDULER_TICK_KEY)
        leader, tick = pipe.execute()
    age = None
    if tick is not None:
        try:
            age = round(max(0.0, time.time() - float(tick)), 1)
        except ValueError:
            age = None
    problem = None
    if leader is None:
        problem = "no active scheduler (none holds the lease)"
    elif age is None or age > STALE_AFTER:
        problem = "the active scheduler has not completed a tick " + (
            "yet" if age is None else f"for {age:.0f} s"
        )
    return {"ok": problem is None, "leader": leader.decode() if leader else None, "last_tick_age": age,
            "problem": problem}
