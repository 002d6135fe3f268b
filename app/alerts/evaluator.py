"""The alert evaluator: one process at a time looks at the conditions every ALERT_INTERVAL seconds.

Candidates are every scheduler process and every web process (`bullrq web`): the scheduler is the natural home,
and the web processes keep alerts going when every scheduler is dead (the "no scheduler" alert needs someone
alive to send it). They compete for a Redis lease (`ALERTS_LEASE_KEY`); the holder renews it each round, and when
it dies another takes over once the lease runs out. The lease only decides who does the work: each round runs in
one PostgreSQL transaction under an advisory lock, and message keys come from the alert rows, so two processes
that both believe they hold the lease still send each message once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from datetime import UTC, datetime

import psycopg
from redis import Redis
from redis.exceptions import RedisError

from app.alerts import conditions, delivery, store
from app.alerts.settings import AlertSettings, load_alert_settings
from app.connections import redis_from_url
from app.errors import BullrqError
from app.leadership import Leadership
from app.store.db import KeptConnection
from app.store.migrate import apply_migrations
from queues import ALERTS_LEASE_KEY

logger = logging.getLogger(__name__)

#: seconds the lease lasts at least (it lasts three rounds when rounds are longer)
MIN_LEASE = 5.0

class AlertEvaluator(threading.Thread):
    """Evaluates the alert conditions while this process holds the lease; a daemon thread of its host process."""

    def __init__(self, redis: Redis, database_url: str, settings: AlertSettings, role: str = "process"):
        super().__init__(name="alerts", daemon=True)
        self.redis = redis
        self.database_url = database_url
        self.settings = settings
        self.identity = f"{role}@{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
        lease_ms = int(max(MIN_LEASE, 3 * settings.interval) * 1000)
        self.lead = Leadership(redis, ALERTS_LEASE_KEY, self.identity, lease_ms)
        self.rounds = 0
        self._stop_event = threading.Event()
        self._kept = KeptConnection(database_url)
        self._migrated = False
        self._failing = False

    def stop(self, timeout: float = 10) -> None:
        self._stop_event.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)

    def run(self) -> None:
        logger.info("alerts %s: candidate evaluator (%d channel(s))", self.identity, len(self.settings.channels))
        while not self._stop_event.is_set():
            started = time.monotonic()
            try:
                if self._holds_lease():
                    self.evaluate_once()
                if self._failing:
                    logger.info("alerts %s: evaluating again", self.identity)
                    self._failing = False
            except (RedisError, psycopg.Error, BullrqError) as exc:
                if not self._failing:
                    logger.warning("alerts %s: cannot evaluate: %s", self.identity, _first_line(exc))
                self._failing = True
                self._kept.drop()
            except Exception:  # a bug must not end the thread: alerts are what tells people things broke
                logger.exception("alerts %s: evaluation failed", self.identity)
                self._kept.drop()
            self._stop_event.wait(max(0.0, self.settings.interval - (time.monotonic() - started)))
        self._release()

    def _holds_lease(self) -> bool:
        change = self.lead.hold()
        if change == "taken":
            logger.info("alerts %s: now the alert evaluator", self.identity)
        elif change == "lost":
            logger.warning("alerts %s: lost the evaluator lease", self.identity)
        return self.lead.leading

    def _release(self) -> None:
        self.lead.release()
        self._kept.drop()

    def _db(self) -> psycopg.Connection:
        if not self._migrated:
            apply_migrations(self.database_url)
            self._migrated = True
        return self._kept.get()

    def evaluate_once(self, now: datetime | None = None) -> list[tuple[dict, store.Event]]:
        """One round: find, record, and enqueue the messages due, in one transaction; returns the events sent."""
        conn = self._db()
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (store.LOCK,))
            now = now or datetime.now(UTC)
            current = store.live(conn)
            findings = conditions.evaluate(self.redis, conn, self.settings, now, current)
            events = store.apply(conn, findings, current, now, self.settings)
            for alert, event in events:
                # enqueued before the commit: a crash in between enqueues again with the same keys, sent once
                delivery.notify(self.redis, self.settings, alert, event)
                store.mark_sent(conn, alert, event, now)
        self.rounds += 1
        return events


def start_evaluator(redis_url: str, database_url: str, role: str, environ: dict | None = None) -> AlertEvaluator | None:
    """Start this process's candidate evaluator thread, unless BULLRQ_ALERTS=0; returns it (None when off).

    Raises:
        ConfigError: an alert setting is invalid (the message names the variable).
    """
    settings = load_alert_settings(environ)
    if not settings.enabled:
        logger.info("alerts: BULLRQ_ALERTS is off: this process does not evaluate alerts")
        return None
    evaluator = AlertEvaluator(redis_from_url(redis_url), database_url, settings, role)
    evaluator.start()
    return evaluator


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
