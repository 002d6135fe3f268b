"""A run's history row as it travels: built as JSON text by the runtime (`run_row`) and added to the Redis stream
`bullrq:history` by the Lua step that records the run's outcome, within the stream's cap (`stream_cap`). The writer
that carries rows into PostgreSQL is `app.store.history`; nothing here needs PostgreSQL's driver, so a worker
without history never loads it.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from app.config import load_settings

#: rows kept in the stream at most while PostgreSQL is away (the oldest go first beyond that)
STREAM_MAXLEN = 100_000
#: bytes of one row at most (its JSON text): with the cap, bounds the stream's memory, not only its length
MAX_ROW_BYTES = 4096
#: characters kept of error messages, tracebacks (their end) and result summaries; a row past MAX_ROW_BYTES even
#: so (characters escaped in JSON take up to 6 bytes) has them cut further (the job keeps its full traceback)
MAX_MESSAGE = 1000
MAX_TRACEBACK = 2000
MAX_RESULT = 1000

#: what started a run of a schedule entry (history column `trigger`); other jobs have none
TRIGGER_CRON, TRIGGER_RUN_NOW = "cron", "run_now"


def storable_json(text: str) -> str:
    """JSON text PostgreSQL can store: its text and jsonb types cannot hold NUL, so an escaped one becomes U+FFFD."""
    return text.replace("\\u0000", "\\ufffd")


@functools.cache
def stream_cap() -> int:
    """The stream's cap to pass to the Lua scripts, 0 when history is switched off (BULLRQ_HISTORY=0)."""
    return STREAM_MAXLEN if load_settings().history else 0


def run_row(
    *,
    job_id: str,
    attempt: int,
    queue: str,
    task: str,
    status: str,
    worker: str | None = None,
    schedule_id: str | None = None,
    schedule_slot: str | None = None,
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
        "trigger": trigger_of(schedule_id, schedule_slot),
        "schedule_slot": schedule_slot,
        "enqueued_at": enqueued_at,
        "started_at": started_at,
        "ended_at": ended_at,
        "items_processed": items_processed,
        "items_failed": items_failed,
    }
    if error is not None:
        row["error_type"] = type(error).__name__[:200]
        row["error_message"] = str(error)[:MAX_MESSAGE]
        row["error_traceback"] = (traceback or "")[-MAX_TRACEBACK:]
    if result is not None:
        text = json.dumps(result, default=str)
        row["result"] = text if len(text) <= MAX_RESULT else json.dumps({"truncated": True, "head": text[:MAX_RESULT]})
    row = {k: v for k, v in row.items() if v is not None}
    text = storable_json(json.dumps(row, default=str))
    while len(text.encode()) > MAX_ROW_BYTES:  # escaped characters: cut the longest text field until it fits
        longest = max(_CUTTABLE, key=lambda name: len(str(row.get(name) or "")))
        value = str(row.get(longest) or "")
        if len(value) < 2:
            break
        if longest == "result":  # JSON text the writer casts to jsonb: replaced, not cut
            row["result"] = json.dumps({"truncated": True})
        elif longest == "error_traceback":
            row[longest] = value[len(value) // 2 :]  # its end says where it failed
        else:
            row[longest] = value[: len(value) // 2]
        text = storable_json(json.dumps(row, default=str))
    return text


#: the fields of a row cut, longest first, until it fits in MAX_ROW_BYTES
_CUTTABLE = ("error_traceback", "error_message", "result", "task", "worker", "schedule_id", "job_id", "enqueued_at")


def trigger_of(schedule_id: str | None, schedule_slot: object) -> str | None:
    """What started a run: a cron slot of its schedule entry, a run now of it, or nothing (not a schedule's job)."""
    if not schedule_id:
        return None
    return TRIGGER_CRON if schedule_slot else TRIGGER_RUN_NOW
