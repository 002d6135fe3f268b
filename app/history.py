"""Durable run history: one `job_runs` row per execution attempt, carried from Redis to PostgreSQL.

A run's row is added to the Redis stream `bullrq:history` by the same Lua step that records the run's outcome,
so it can never be lost between the two. Each worker process drains the stream into PostgreSQL in batches
(`HistoryWriter`, a consumer of the stream's group): rows are acknowledged only once committed, a dead
consumer's unacknowledged rows are claimed by another, and a replayed row updates the row already written
(unique on job id + attempt) instead of adding one. While PostgreSQL is down rows wait in the stream, which is
capped at `STREAM_MAXLEN` entries.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from typing import Any

import psycopg
from redis import Redis
from redis.exceptions import RedisError, ResponseError

from app import rollup
from app.config import load_settings
from app.db import connect
from queues import HISTORY_STREAM

logger = logging.getLogger(__name__)

GROUP = "history-writers"
#: rows kept in the stream at most while PostgreSQL is away (the oldest go first beyond that)
STREAM_MAXLEN = 1_000_000
#: rows written per batch; seconds a consumer blocks waiting for rows
BATCH = 1000
BLOCK = 0.5
#: seconds after which rows read but not acknowledged by a (dead) consumer are claimed by another
CLAIM_AFTER = 30
#: characters kept of error messages, tracebacks and result summaries
MAX_MESSAGE = 2000
MAX_TRACEBACK = 8000
MAX_RESULT = 2000

COLUMNS = (
    "job_id", "attempt", "queue", "task", "schedule_id", "worker", "status", "enqueued_at", "started_at",
    "ended_at", "duration_ms", "items_processed", "items_failed", "error_type", "error_message",
    "error_traceback", "result", "metadata",
)  # fmt: skip

# A replayed or late row never turns a finished run back into "started".
_UPSERT = f"""
INSERT INTO job_runs ({", ".join(COLUMNS)})
SELECT {", ".join(COLUMNS)} FROM incoming
ON CONFLICT (job_id, attempt) DO UPDATE SET
    {", ".join(f"{c} = COALESCE(EXCLUDED.{c}, job_runs.{c})" for c in COLUMNS[2:])}
WHERE job_runs.status = 'started' OR EXCLUDED.status <> 'started'
"""


@functools.cache
def stream_cap() -> int:
    """The stream's cap to pass to the Lua scripts, 0 when history is switched off (BULLRQ_HISTORY=0)."""
    return STREAM_MAXLEN if load_settings().history else 0


# Attempts whose row turns final with this batch: new ones, and those only known as "started" so far.
_NEWLY_FINISHED = """
SELECT i.queue, i.task, i.status, COALESCE(i.started_at, r.started_at) AS started_at,
       COALESCE(i.duration_ms, EXTRACT(EPOCH FROM i.ended_at - r.started_at) * 1000) AS duration_ms
FROM incoming i LEFT JOIN job_runs r ON r.job_id = i.job_id AND r.attempt = i.attempt
WHERE i.status <> 'started' AND (r.status IS NULL OR r.status = 'started')
"""
#: transaction-level advisory lock key shared by history writers ("bullrq-history")
WRITE_LOCK = 0x62756C6C72716869


def run_row(
    *,
    job_id: str,
    attempt: int,
    queue: str,
    task: str,
    status: str,
    worker: str | None = None,
    schedule_id: str | None = None,
    enqueued_at: str | None = None,
    started_at: float | None = None,
    ended_at: float | None = None,
    items_processed: int | None = None,
    items_failed: int | None = None,
    error: BaseException | None = None,
    traceback: str | None = None,
    result: Any = None,
) -> str:
    """One history row as the JSON text stored in the stream (times in epoch seconds)."""
    row = {
        "job_id": job_id,
        "attempt": attempt,
        "queue": queue,
        "task": task,
        "status": status,
        "worker": worker,
        "schedule_id": schedule_id,
        "enqueued_at": enqueued_at,
        "started_at": started_at,
        "ended_at": ended_at,
        "items_processed": items_processed,
        "items_failed": items_failed,
    }
    if error is not None:
        row["error_type"] = type(error).__name__
        row["error_message"] = str(error)[:MAX_MESSAGE]
        row["error_traceback"] = (traceback or "")[-MAX_TRACEBACK:]
    if result is not None:
        text = json.dumps(result, default=str)
        row["result"] = text if len(text) <= MAX_RESULT else json.dumps({"truncated": True, "head": text[:MAX_RESULT]})
    return json.dumps({k: v for k, v in row.items() if v is not None}, default=str)


def _record(fields: dict) -> tuple:
    """A stream entry's row as a tuple in COLUMNS order, ready for COPY."""
    row = json.loads(fields[b"row"])
    started, ended = row.get("started_at"), row.get("ended_at")
    if isinstance(started, float | int) and isinstance(ended, float | int):
        row["duration_ms"] = round((ended - started) * 1000, 3)
    for name in ("enqueued_at", "started_at", "ended_at"):
        value = row.get(name)
        if isinstance(value, float | int):
            row[name] = _timestamp(value)
        elif isinstance(value, str):  # RQ's date format, written by the Lua scripts
            row[name] = value.replace("Z", "+00:00") if value else None
    row.setdefault("metadata", "{}")
    if isinstance(row["metadata"], dict):
        row["metadata"] = json.dumps(row["metadata"])
    return tuple(row.get(column) for column in COLUMNS)


def _timestamp(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1e6):06d}+00:00"


def write_rows(conn: psycopg.Connection, records: list[tuple]) -> None:
    """Upsert rows (tuples in COLUMNS order) and count newly finished attempts in the hourly rollup, in one
    transaction: COPY into a temporary table, then one INSERT. Writers take turns (a transaction-level lock), so
    an attempt that reaches its final status is counted exactly once, however often its row is replayed."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
        conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS incoming (LIKE job_runs INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        with conn.cursor().copy(f"COPY incoming ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for record in _last_per_attempt(records):
                copy.write_row(record)
        finishing = conn.execute(_NEWLY_FINISHED).fetchall()
        conn.execute(_UPSERT)
        rollup.add_finished(conn, finishing)


def _last_per_attempt(records: list[tuple]) -> list[tuple]:
    """One row per (job, attempt) within a batch (ON CONFLICT refuses two): the final one wins over "started"."""
    chosen: dict[tuple, tuple] = {}
    status_at = COLUMNS.index("status")
    for record in records:
        key = record[:2]
        if key not in chosen or record[status_at] != "started":
            chosen[key] = record
    return list(chosen.values())


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
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                self._stopped.wait(backoff)
                backoff = min(backoff * 2, 10)

    def drain_once(self, block: float = BLOCK) -> int:
        """Write one batch: this consumer's unacknowledged rows first, then rows claimed from dead consumers, then
        new rows. Returns how many rows were written."""
        ensure_group(self.connection)
        entries = self._read("0", block=None)  # ours, read before a failure and not yet written
        if not entries:
            claimed = self.connection.xautoclaim(
                HISTORY_STREAM, GROUP, self.consumer, min_idle_time=CLAIM_AFTER * 1000, count=BATCH
            )
            entries = claimed[1]
        if not entries:
            entries = self._read(">", block=block)
        entries = [(entry_id, fields) for entry_id, fields in entries if fields]  # trimmed while pending
        if not entries:
            return 0
        if self._conn is None:
            self._conn = connect(self.database_url, autocommit=True)
        write_rows(self._conn, [_record(fields) for _, fields in entries])
        ids = [entry_id for entry_id, _ in entries]
        with self.connection.pipeline() as pipe:
            pipe.xack(HISTORY_STREAM, GROUP, *ids)
            pipe.xdel(HISTORY_STREAM, *ids)
            pipe.execute()
        self.written += len(entries)
        return len(entries)

    def _read(self, start: str, block: float | None) -> list:
        reply = self.connection.xreadgroup(
            GROUP, self.consumer, {HISTORY_STREAM: start}, count=BATCH, block=int(block * 1000) if block else None
        )
        return reply[0][1] if reply else []


def _which(exc: BaseException) -> str:
    return "PostgreSQL" if isinstance(exc, psycopg.Error) else "Redis"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
