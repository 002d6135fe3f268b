"""Schedule state in PostgreSQL (`job_schedules`) and the operations on it: list, show, enable, disable, set cron
or time zone, clear overrides, run now, reset a stuck entry, fire a due slot.

The yaml file declares entries; run-time overrides (enabled, cron, time zone) live here and win until cleared.
Firing claims a slot with a compare-and-set on `next_run_at`, so however many schedulers run, a slot fires once.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from uuid import NAMESPACE_URL, uuid4, uuid5

import psycopg
from redis import Redis

from app.errors import BullrqError, InvalidJobError
from app.runtime import control
from app.runtime.enqueue import enqueue
from app.runtime.jobs import fetch_job, state_of
from app.scheduling.cron import Cron, CronError
from app.scheduling.schedules import ScheduleEntry
from app.tasks import get_queue_spec

logger = logging.getLogger(__name__)

_DECLARED = ("task", "queue", "cron", "timezone", "args", "description", "enabled", "max_runtime", "catch_up")


class UnknownScheduleError(BullrqError):
    """Raised when no schedule entry has the given id."""


def effective(row: dict) -> dict:
    """The row with the values in force: overrides over the declaration."""
    return {
        **row,
        "effective_cron": row["cron_override"] or row["cron"],
        "effective_timezone": row["timezone_override"] or row["timezone"],
        "effective_enabled": row["enabled"] if row["enabled_override"] is None else row["enabled_override"],
    }


def cron_of(row: dict) -> Cron:
    row = effective(row)
    return Cron(row["effective_cron"], row["effective_timezone"])


def sync_declared(conn: psycopg.Connection, entries: list[ScheduleEntry], now: datetime | None = None) -> None:
    """Make the table match the declaration: new entries added, changed ones updated (overrides and state kept),
    entries no longer declared removed. An entry whose cron in force changed, or that is enabled again, gets a new
    next_run_at (after `now`)."""
    now = now or datetime.now(UTC)
    with conn.transaction():
        existing = {row["id"]: row for row in conn.execute("SELECT * FROM job_schedules FOR UPDATE")}
        for entry in entries:
            values = {name: getattr(entry, name) for name in _DECLARED}
            values["args"] = json.dumps(entry.args)
            row = existing.pop(entry.id, None)
            if row is None:
                conn.execute(
                    f"INSERT INTO job_schedules (id, {', '.join(_DECLARED)}, next_run_at) "
                    f"VALUES (%(id)s, {', '.join(f'%({n})s' for n in _DECLARED)}, %(next)s)",
                    {**values, "id": entry.id, "next": Cron(entry.cron, entry.timezone).next_after(now)},
                )
                continue
            before = cron_of(row)
            conn.execute(
                f"UPDATE job_schedules SET {', '.join(f'{n} = %({n})s' for n in _DECLARED)}, updated_at = now() "
                "WHERE id = %(id)s",
                {**values, "id": entry.id},
            )
            declared = {**row, "cron": entry.cron, "timezone": entry.timezone, "enabled": entry.enabled}
            after = cron_of(declared)
            # Enabled again: slots that passed while it was off are not owed (as when enabled over the API).
            woke = effective(declared)["effective_enabled"] and not effective(row)["effective_enabled"]
            if woke or (before.expression, before.timezone) != (after.expression, after.timezone):
                _set_next(conn, entry.id, after.next_after(now))
        for gone in existing:
            conn.execute("DELETE FROM job_schedules WHERE id = %s", (gone,))
            logger.info("schedule %s: no longer declared, removed", gone)


def _set_next(conn: psycopg.Connection, schedule_id: str, next_run_at: datetime) -> None:
    conn.execute(
        "UPDATE job_schedules SET next_run_at = %s, updated_at = now() WHERE id = %s", (next_run_at, schedule_id)
    )


def list_schedules(conn: psycopg.Connection) -> list[dict]:
    return [effective(row) for row in conn.execute("SELECT * FROM job_schedules ORDER BY id")]


def get_schedule(conn: psycopg.Connection, schedule_id: str) -> dict:
    """The entry `schedule_id` with its values in force.

    Raises:
        UnknownScheduleError: no such entry.
    """
    row = conn.execute("SELECT * FROM job_schedules WHERE id = %s", (schedule_id,)).fetchone()
    if row is None:
        known = [r["id"] for r in conn.execute("SELECT id FROM job_schedules ORDER BY id")]
        raise UnknownScheduleError(f"unknown schedule {schedule_id!r}; schedules: {', '.join(known) or 'none'}")
    return effective(row)


def set_overrides(
    conn: psycopg.Connection,
    schedule_id: str,
    *,
    enabled: bool | None = None,
    cron: str | None = None,
    timezone: str | None = None,
) -> dict:
    """Change an entry at run time (kept until `clear_overrides`); a new cron or zone recomputes next_run_at.

    Raises:
        UnknownScheduleError: no such entry.
        CronError: the cron or time zone is not valid.
    """
    if cron == "" or timezone == "":  # an empty override would read as "none" and pin the declared value
        raise CronError(f"an empty {'cron' if cron == '' else 'time zone'} is not valid; clear overrides instead")
    with conn.transaction():
        row = get_schedule(conn, schedule_id)
        changed = {**row}
        if cron is not None:
            changed["cron_override"] = cron
        if timezone is not None:
            changed["timezone_override"] = timezone
        new_cron = cron_of(changed)  # validates both
        if cron is not None:
            changed["cron_override"] = new_cron.expression
        if enabled is not None:
            changed["enabled_override"] = enabled
        conn.execute(
            "UPDATE job_schedules SET cron_override = %s, timezone_override = %s, enabled_override = %s, "
            "updated_at = now() WHERE id = %s",
            (changed["cron_override"], changed["timezone_override"], changed["enabled_override"], schedule_id),
        )
        if cron is not None or timezone is not None or enabled:
            _set_next(conn, schedule_id, new_cron.next_after(datetime.now(UTC)))
    logger.info("schedule %s: overrides set (enabled=%s cron=%s timezone=%s)", schedule_id, enabled, cron, timezone)
    return get_schedule(conn, schedule_id)


def clear_overrides(conn: psycopg.Connection, schedule_id: str) -> dict:
    """Go back to what schedules.yaml declares."""
    return _reset_fields(conn, schedule_id, "cron_override = NULL, timezone_override = NULL, enabled_override = NULL",
                         recompute=True)


def reset(conn: psycopg.Connection, schedule_id: str) -> dict:
    """Free an entry whose run is stuck: it is marked failed and may fire again."""
    return _reset_fields(
        conn,
        schedule_id,
        "last_status = 'error', last_error = 'reset by an operator', current_job_id = NULL, current_started_at = NULL",
        recompute=False,
    )


def _reset_fields(conn: psycopg.Connection, schedule_id: str, assignments: str, recompute: bool) -> dict:
    with conn.transaction():
        get_schedule(conn, schedule_id)
        conn.execute(f"UPDATE job_schedules SET {assignments}, updated_at = now() WHERE id = %s", (schedule_id,))
        if recompute:
            _set_next(conn, schedule_id, cron_of(get_schedule(conn, schedule_id)).next_after(datetime.now(UTC)))
    return get_schedule(conn, schedule_id)


def refresh_status(conn: psycopg.Connection, redis: Redis, row: dict) -> dict:
    """Bring a running entry's state up to date with its job in Redis; returns the row as it now is."""
    if row["last_status"] != "running" or not row["current_job_id"]:
        return row
    job = fetch_job(row["current_job_id"], redis)
    state = state_of(job.get_status(refresh=False)) if job is not None else None
    if state is not None and state.value in ("waiting", "delayed", "active"):
        # max_runtime counts from the start of the run, not from the fire: a job still waiting is not stuck
        started = job.started_at if state.value == "active" else None
        return {**row, "job_state": state.value, "job_started_at": started}
    status, result, error, duration = "error", None, "its job vanished from Redis", None
    if job is not None:
        latest = job.latest_result()
        if job.started_at and job.ended_at:
            duration = (job.ended_at - job.started_at).total_seconds() * 1000
        if state.value == "completed":
            status, error = "success", None
            result = latest.return_value if latest else None
        else:
            error = (latest.exc_string if latest else None) or f"job ended {state.value}"
    conn.execute(
        "UPDATE job_schedules SET last_status = %s, last_result = %s, last_error = %s, last_duration_ms = %s, "
        "current_job_id = NULL, current_started_at = NULL, updated_at = now() "
        "WHERE id = %s AND current_job_id = %s",
        (status, json.dumps(result, default=str) if result is not None else None, error and error[-2000:],
         duration, row["id"], row["current_job_id"]),
    )
    return {**row, "last_status": status, "current_job_id": None}


def fire(
    conn: psycopg.Connection,
    redis: Redis,
    row: dict,
    slot: datetime | None,
    next_run_at: datetime | None,
    now: datetime | None = None,
) -> str | None:
    """Start a run of entry `row` for `slot` (None: run now, outside the cron) and move next_run_at on.

    The claim is a compare-and-set on next_run_at inside a transaction that commits only once the job is in Redis:
    another scheduler that saw the same slot claims nothing, and a failed enqueue leaves the slot to fire later.
    A slot's job id is derived from (entry, slot): a scheduler that dies between the enqueue and the COMMIT leaves
    the slot due, and the standby that fires it again enqueues the same id, which creates nothing new.

    Returns:
        The job id, or None when the slot was already claimed.
    """
    job_id = slot_job_id(row["id"], slot) if slot is not None else str(uuid4())
    now = now or datetime.now(UTC)
    with conn.transaction():
        if slot is None:
            claimed = conn.execute(
                "UPDATE job_schedules SET last_run_at = %s, total_runs = total_runs + 1, last_status = 'running', "
                "current_job_id = %s, current_started_at = %s, updated_at = now() "
                "WHERE id = %s AND (current_job_id IS NULL) RETURNING id",
                (now, job_id, now, row["id"]),
            ).fetchone()
        else:
            claimed = conn.execute(
                "UPDATE job_schedules SET next_run_at = %s, last_run_at = %s, total_runs = total_runs + 1, "
                "last_status = 'running', current_job_id = %s, current_started_at = %s, updated_at = now() "
                "WHERE id = %s AND next_run_at = %s RETURNING id",
                (next_run_at, slot, job_id, now, row["id"], slot),
            ).fetchone()
        if claimed is None:
            return None
        args = row["args"] if isinstance(row["args"], dict) else json.loads(row["args"])
        options = {"queue": row["queue"]}
        if row["max_runtime"] < get_queue_spec(row["queue"]).timeout:
            options["timeout"] = row["max_runtime"]  # its worker stops the run at max_runtime, counted from its start
        enqueue(
            redis, row["task"], args, options, schedule_id=row["id"],
            schedule_slot=slot.timestamp() if slot else None, job_id=job_id,
        )  # fmt: skip
    logger.info("schedule %s: fired job %s for %s", row["id"], job_id, slot.isoformat() if slot else "run now")
    return job_id


def slot_job_id(schedule_id: str, slot: datetime) -> str:
    """The id of the job that runs entry `schedule_id` for `slot`: the same however often the slot is fired (RQ
    allows only letters, digits, _ and - in ids, so a name-based UUID rather than the entry's own name)."""
    return str(uuid5(NAMESPACE_URL, f"bullrq:schedule:{schedule_id}:{slot.astimezone(UTC).isoformat()}"))


def skip(conn: psycopg.Connection, row: dict, slot: datetime, next_run_at: datetime, reason: str) -> bool:
    """Move past `slot` without running it (recorded in the log). Returns False when another scheduler moved it."""
    with conn.transaction():
        moved = conn.execute(
            "UPDATE job_schedules SET next_run_at = %s, updated_at = now() WHERE id = %s AND next_run_at = %s",
            (next_run_at, row["id"], slot),
        ).rowcount
        if moved:
            conn.execute(
                "INSERT INTO job_runs (job_id, attempt, queue, task, schedule_id, status, started_at, ended_at, "
                "error_message, trigger, schedule_slot) VALUES (%s, 1, %s, %s, %s, 'skipped', %s, now(), %s, "
                "'cron', %s) ON CONFLICT (job_id, attempt) DO NOTHING",
                (f"schedule:{row['id']}:{slot.isoformat()}", row["queue"], row["task"], row["id"], slot, reason,
                 slot),
            )
    if moved:
        logger.info("schedule %s: slot %s skipped: %s", row["id"], slot.isoformat(), reason)
    return bool(moved)


def mark_stuck(conn: psycopg.Connection, redis: Redis, row: dict) -> None:
    """Free an entry whose run went on past max_runtime (its worker did not stop it: wedged, or the handler
    ignores the timeout): the entry is marked failed and the run is canceled, so it never runs on beside the next."""
    conn.execute(
        "UPDATE job_schedules SET last_status = 'error', last_error = %s, current_job_id = NULL, "
        "current_started_at = NULL, updated_at = now() WHERE id = %s AND current_job_id = %s",
        (f"stuck: still running after {row['max_runtime']} s; entry freed", row["id"], row["current_job_id"]),
    )
    logger.warning("schedule %s: job %s ran past %d s, marked failed", row["id"], row["current_job_id"],
                   row["max_runtime"])
    try:
        control.cancel(redis, row["current_job_id"])
    except InvalidJobError:  # gone meanwhile
        pass
