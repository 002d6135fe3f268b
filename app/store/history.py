"""Durable run history: one `job_runs` row per execution attempt, carried from Redis to PostgreSQL.

A run's row is added to the Redis stream `bullrq:history` by the same Lua step that records the run's outcome,
so it can never be lost between the two. Each worker process drains the stream into PostgreSQL in batches
(`HistoryWriter`, a consumer of the stream's group): rows are acknowledged only once committed, a dead
consumer's unacknowledged rows are claimed by another, and a replayed row updates the row already written
(unique on job id + attempt) instead of adding one. While PostgreSQL is down rows wait in the stream, which is
capped at `STREAM_MAXLEN` rows of at most `MAX_ROW_BYTES` each, so a long outage holds at most about 400 MB of
Redis (typical rows take a tenth of that); the oldest rows go first beyond it.
"""

from __future__ import annotations

import logging
import threading
import time

import psycopg
from redis import Redis
from redis.exceptions import RedisError, ResponseError

from app.store import rollup
from app.store.db import connect
from app.store.rows import STREAM_MAXLEN
from queues import HISTORY_STREAM

logger = logging.getLogger(__name__)

GROUP = "history-writers"
#: rows written per batch; seconds a consumer blocks waiting for rows
BATCH = 1000
BLOCK = 0.5
#: seconds after which rows read but not acknowledged by a (dead) consumer are claimed by another
CLAIM_AFTER = 30
#: seconds a writer lets a trickle of rows gather before writing them
GATHER = 0.25
COLUMNS = (
    "job_id", "attempt", "queue", "task", "schedule_id", "worker", "status", "enqueued_at", "started_at",
    "ended_at", "duration_ms", "items_processed", "items_failed", "error_type", "error_message",
    "error_traceback", "result", "metadata", "trigger", "schedule_slot",
)  # fmt: skip


def _time(field: str) -> str:
    """SQL reading a time of a raw row: epoch seconds (from Python) or RQ's date text (from the Lua scripts)."""
    return (
        f"CASE jsonb_typeof(row->'{field}') WHEN 'number' THEN to_timestamp((row->>'{field}')::float8) "
        f"WHEN 'string' THEN (row->>'{field}')::timestamptz END"
    )


# The raw rows (JSON, COPYed as they are) become one typed row per attempt; the final one wins over "started".
_TYPED = f"""
INSERT INTO incoming ({", ".join(COLUMNS)})
SELECT DISTINCT ON (job_id, attempt) job_id, attempt, queue, task, schedule_id, worker, status, enqueued_at,
       started_at, ended_at, EXTRACT(EPOCH FROM ended_at - started_at) * 1000, items_processed, items_failed,
       error_type, error_message, error_traceback, result, '{{}}'::jsonb, trigger, schedule_slot
FROM (
    SELECT r.*, {_time("enqueued_at")} AS enqueued_at, {_time("started_at")} AS started_at,
           {_time("ended_at")} AS ended_at, (row->>'result')::jsonb AS result,
           {_time("schedule_slot")} AS schedule_slot
    FROM incoming_raw, jsonb_to_record(row) AS r(
        job_id text, attempt int, queue text, task text, schedule_id text, worker text, status text,
        items_processed int, items_failed int, error_type text, error_message text, error_traceback text,
        trigger text)
) AS parsed
ORDER BY job_id, attempt, status = 'started'
"""
# Attempts whose row turns final with this batch: new ones, and those only known as "started" so far.
_FINISHING = """
INSERT INTO finishing (queue, task, status, started_at, duration_ms)
SELECT i.queue, i.task, i.status, COALESCE(i.started_at, r.started_at),
       COALESCE(i.duration_ms, EXTRACT(EPOCH FROM i.ended_at - r.started_at) * 1000)
FROM incoming i LEFT JOIN job_runs r ON r.job_id = i.job_id AND r.attempt = i.attempt
WHERE i.status <> 'started' AND (r.status IS NULL OR r.status = 'started')
"""
# A replayed or late row never turns a finished run back into "started".
_UPSERT = f"""
INSERT INTO job_runs ({", ".join(COLUMNS)})
SELECT {", ".join(COLUMNS)} FROM incoming
ON CONFLICT (job_id, attempt) DO UPDATE SET
    {", ".join(f"{c} = COALESCE(EXCLUDED.{c}, job_runs.{c})" for c in COLUMNS[2:])}
WHERE job_runs.status = 'started' OR EXCLUDED.status <> 'started'
"""
_TEMP_TABLES = (
    "CREATE TEMP TABLE IF NOT EXISTS incoming_raw (row jsonb) ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE IF NOT EXISTS incoming (LIKE job_runs INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE IF NOT EXISTS finishing (queue text, task text, status text, started_at timestamptz, "
    "duration_ms double precision) ON COMMIT DELETE ROWS",
)
#: transaction-level advisory lock key shared by history writers ("bullrq-history")
WRITE_LOCK = 0x62756C6C72716869


def write_rows(conn: psycopg.Connection, rows: list[bytes | str]) -> None:
    """Upsert rows (the JSON texts of `run_row`) and count newly finished attempts in the hourly rollup, in one
    transaction; PostgreSQL parses the rows, Python only copies their bytes. Writers take turns (a transaction
    lock), so an attempt that reaches its final status is counted once, however often its row is replayed."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
        for statement in _TEMP_TABLES:
            conn.execute(statement)
        with conn.cursor().copy("COPY incoming_raw (row) FROM STDIN") as copy:
            for row in rows:
                copy.write_row((row.decode() if isinstance(row, bytes) else row,))
        conn.execute(_TYPED)
        conn.execute(_FINISHING)
        for statement in rollup.add_sql("finishing"):
            conn.execute(statement)
        conn.execute(_UPSERT)


def ensure_group(connection: Redis) -> None:
    try:
        connection.xgroup_create(HISTORY_STREAM, GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


class HistoryWriter(threading.Thread):
    """Drains the history stream into PostgreSQL; one per worker process, named after it."""

    def __init__(self, connection: Redis, database_url: str, consumer: str):
        super().__init__(name=f"history-{consumer}", daemon=True)
        self.connection = connection
        self.database_url = database_url
        self.consumer = consumer
        self._stopped = threading.Event()
        self._conn: psycopg.Connection | None = None
        self.written = 0
        self._unsure = True  # at start: rows this consumer may have read before a restart
        self._next_claim = 0.0

    def stop(self) -> None:
        self._stopped.set()
        if self.is_alive():
            self.join(timeout=BLOCK + 10)
        if self._conn is not None:
            self._conn.close()

    def run(self) -> None:
        backoff = 0.5
        while not self._stopped.is_set():
            try:
                self.drain_once()
                backoff = 0.5
            except (psycopg.Error, RedisError) as exc:
                logger.warning("history: %s unavailable, rows wait in Redis (%s)", _which(exc), _first_line(exc))
                # a read may have reached Redis and its reply been lost: those rows are pending under our name
                self._unsure = True
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                self._stopped.wait(backoff)
                backoff = min(backoff * 2, 10)

    def drain_once(self, block: float = BLOCK) -> int:
        """Write one batch: this consumer's unacknowledged rows first (after a failure), then rows claimed from
        dead consumers (every CLAIM_AFTER seconds), then new rows. Returns how many rows were written."""
        entries = []
        if self._unsure:  # the last batch failed: its rows are still ours, pending
            ensure_group(self.connection)
            entries = self._read("0", block=None)
        if not entries and time.monotonic() >= self._next_claim:
            ensure_group(self.connection)
            entries = self.connection.xautoclaim(
                HISTORY_STREAM, GROUP, self.consumer, min_idle_time=CLAIM_AFTER * 1000, count=BATCH
            )[1]
            self._next_claim = time.monotonic() + CLAIM_AFTER / 3
        if not entries:
            entries = self._read(">", block=block)
            if 0 < len(entries) < BATCH // 4 and block:
                # a trickle: wait a moment so rows go in batches (fewer transactions), still well within 2 s
                self._stopped.wait(GATHER)
                entries += self._read(">", block=None, count=BATCH - len(entries))
        # Rows the cap trimmed while they waited unacknowledged come back as ids without fields (`(id, {})`): they
        # are gone, so acknowledge them, or this consumer would read the same empty ids first forever.
        trimmed = [entry_id for entry_id, fields in entries if not fields]
        if trimmed:
            self.connection.xack(HISTORY_STREAM, GROUP, *trimmed)
            logger.warning("history: %d row(s) were trimmed from the stream before they could be written (cap: %d)",
                           len(trimmed), STREAM_MAXLEN)
        entries = [(entry_id, fields) for entry_id, fields in entries if fields]
        if not entries:
            return 0
        self._unsure = True
        if self._conn is None:
            self._conn = connect(self.database_url, autocommit=True)
        rows = [fields[b"row"] for _, fields in entries]
        try:
            write_rows(self._conn, rows)
        except psycopg.DataError:  # a malformed row: write the others one by one, log and drop the bad one
            for row in rows:
                try:
                    write_rows(self._conn, [row])
                except psycopg.DataError as exc:
                    logger.error("history: dropped a malformed row (%s): %.200r", _first_line(exc), row)
        ids = [entry_id for entry_id, _ in entries]
        with self.connection.pipeline() as pipe:
            pipe.xack(HISTORY_STREAM, GROUP, *ids)
            pipe.xdel(HISTORY_STREAM, *ids)
            pipe.execute()
        self._unsure = False
        self.written += len(entries)
        return len(entries)

    def _read(self, start: str, block: float | None, count: int = BATCH) -> list:
        try:
            reply = self.connection.xreadgroup(
                GROUP, self.consumer, {HISTORY_STREAM: start}, count=count, block=int(block * 1000) if block else None
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            ensure_group(self.connection)  # the stream was deleted (Redis flushed): make it again
            return []
        return reply[0][1] if reply else []


def _which(exc: BaseException) -> str:
    return "PostgreSQL" if isinstance(exc, psycopg.Error) else "Redis"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
