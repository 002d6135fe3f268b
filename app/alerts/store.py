"""Alert state in PostgreSQL (`alerts`, migration 0008): findings turn into alerts, alerts into events to send.

One live row (pending or open) per key. `apply` moves every live row on by what was found now and returns the
messages due: "opened" once per alert, when it opens (or, when a message about the same key went out less than
ALERT_COOLDOWN ago, once the cooldown is over and it is still open), and "cleared" once, for an alert whose opening
was told. An alert that opens and clears within a cooldown is recorded but never told: a flapping condition costs
at most two messages per cooldown. Callers hold `LOCK` for the whole step, so two evaluators never interleave.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from enum import StrEnum

import psycopg

from app.alerts.conditions import Condition, Finding
from app.alerts.settings import AlertSettings

#: advisory lock held by the evaluation step ("bullrq-alerts")
LOCK = 0x62756C6C72616C
#: alerts shown as recent: cleared within this many hours
RECENT_HOURS = 24


class Event(StrEnum):
    OPENED = "opened"
    CLEARED = "cleared"


def live(conn: psycopg.Connection) -> dict[str, dict]:
    """The pending and open alerts by key, locked for this transaction."""
    return {row["key"]: row for row in conn.execute("SELECT * FROM alerts WHERE status <> 'cleared' FOR UPDATE")}


def apply(conn: psycopg.Connection, findings: list[Finding], current: dict[str, dict], now: datetime,
          settings: AlertSettings) -> list[tuple[dict, Event]]:  # fmt: skip
    """Record `findings` against the `current` live alerts; returns the (alert, event) messages now due."""
    seen = set()
    for finding in findings:
        if finding.key in seen:
            continue
        seen.add(finding.key)
        row = current.get(finding.key)
        details = json.dumps({**finding.details, "path": finding.path}, default=str)
        values = {"summary": finding.summary, "details": details, "count": finding.count, "now": now}
        if row is None:
            opened = finding.hold <= 0
            conn.execute(
                "INSERT INTO alerts (key, condition, queue, task, schedule_id, status, summary, details, count, "
                "first_seen_at, last_seen_at, opened_at) VALUES (%(key)s, %(condition)s, %(queue)s, %(task)s, "
                "%(schedule_id)s, %(status)s, %(summary)s, %(details)s, %(count)s, %(now)s, %(now)s, %(opened)s)",
                {**values, "key": finding.key, "condition": str(finding.condition), "queue": finding.queue,
                 "task": finding.task, "schedule_id": finding.schedule_id,
                 "status": "open" if opened else "pending", "opened": now if opened else None},
            )  # fmt: skip
            continue
        opens = row["status"] == "pending" and (now - row["first_seen_at"]).total_seconds() >= finding.hold
        conn.execute(
            "UPDATE alerts SET summary = %(summary)s, details = %(details)s, count = %(count)s, "
            "last_seen_at = %(now)s, status = CASE WHEN %(opens)s THEN 'open' ELSE status END, "
            "opened_at = CASE WHEN %(opens)s THEN %(now)s ELSE opened_at END WHERE id = %(id)s",
            {**values, "opens": opens, "id": row["id"]},
        )
    for key, row in current.items():
        if key in seen:
            continue
        if row["status"] == "pending":  # never held long enough to be an alert
            conn.execute("DELETE FROM alerts WHERE id = %s", (row["id"],))
        elif (now - row["last_seen_at"]).total_seconds() >= settings.clear_after:
            conn.execute("UPDATE alerts SET status = 'cleared', cleared_at = %s WHERE id = %s", (now, row["id"]))
    return _due(conn, now, settings)


def _due(conn: psycopg.Connection, now: datetime, settings: AlertSettings) -> list[tuple[dict, Event]]:
    due = []
    for row in conn.execute(
        "SELECT a.*, (SELECT max(b.last_sent_at) FROM alerts b WHERE b.key = a.key) AS key_sent_at FROM alerts a "
        "WHERE (a.status = 'open' AND NOT a.open_sent) OR (a.status = 'cleared' AND a.open_sent AND NOT a.clear_sent) "
        "ORDER BY a.id"
    ).fetchall():
        if row["status"] == "cleared":
            due.append((row, Event.CLEARED))
        elif row["key_sent_at"] is None or now - row["key_sent_at"] >= timedelta(seconds=settings.cooldown):
            due.append((row, Event.OPENED))
    return due


def mark_sent(conn: psycopg.Connection, alert: dict, event: Event, now: datetime) -> None:
    column = "open_sent" if event is Event.OPENED else "clear_sent"
    conn.execute(
        f"UPDATE alerts SET {column} = true, messages_sent = messages_sent + 1, last_sent_at = %s WHERE id = %s",
        (now, alert["id"]),
    )


def list_alerts(conn: psycopg.Connection, recent_limit: int = 50) -> dict:
    """Open alerts (newest first), pending ones, and those cleared in the last RECENT_HOURS (at most
    `recent_limit`)."""
    rows = conn.execute("SELECT * FROM alerts WHERE status <> 'cleared' ORDER BY opened_at DESC NULLS LAST, id DESC")
    live_rows = [public(r) for r in rows]
    recent = conn.execute(
        "SELECT * FROM alerts WHERE status = 'cleared' AND cleared_at >= now() - make_interval(hours => %s) "
        "ORDER BY cleared_at DESC, id DESC LIMIT %s",
        (RECENT_HOURS, recent_limit),
    )
    return {
        "open": [r for r in live_rows if r["status"] == "open"],
        "pending": [r for r in live_rows if r["status"] == "pending"],
        "recent": [public(r) for r in recent],
    }


def open_counts(conn: psycopg.Connection) -> dict[str, int]:
    """Open alerts per condition, every condition listed (0 when none)."""
    counts = {str(c): 0 for c in Condition}
    for row in conn.execute("SELECT condition, count(*) AS n FROM alerts WHERE status = 'open' GROUP BY 1"):
        counts[row["condition"]] = row["n"]
    return counts


def public(row: dict) -> dict:
    """An alert as the API, the CLI and the pages show it."""
    return {
        "id": row["id"],
        "key": row["key"],
        "condition": row["condition"],
        "status": row["status"],
        "summary": row["summary"],
        "queue": row["queue"],
        "task": row["task"],
        "scheduleId": row["schedule_id"],
        "count": row["count"],
        "details": row["details"],
        "firstSeenAt": _iso(row["first_seen_at"]),
        "openedAt": _iso(row["opened_at"]),
        "lastSeenAt": _iso(row["last_seen_at"]),
        "clearedAt": _iso(row["cleared_at"]),
        "notified": row["open_sent"],
        "messagesSent": row["messages_sent"],
        "lastSentAt": _iso(row["last_sent_at"]),
    }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None
