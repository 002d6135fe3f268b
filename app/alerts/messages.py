"""The words of an alert message: a subject, a text a person can act on, and the JSON body of a webhook."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from app.alerts.conditions import duration
from app.alerts.settings import AlertSettings
from app.alerts.store import Event

#: characters: the longest subject (one header line) and text (WhatsApp takes 4,096 with the subject)
MAX_SUBJECT = 200
MAX_TEXT = 3500

#: what a person can do, per condition
_ADVICE = {
    "failed": "Open the failed runs, read the error, fix the cause, then retry them from the overview "
              "(Retry failed) or with `bullrq queues retry-failed QUEUE`.",
    "failure_rate": "Look at the failing runs of the queue on the history and jobs pages; an outside service may be "
                    "down or a setting wrong.",
    "backlog": "Check that the queue's workers run and are not paused (`workers status`); start more with "
               "`workers start QUEUE`.",
    "no_worker": "Start its workers: `workers start QUEUE` (or check why they stopped: `workers logs NAME`).",
    "no_scheduler": "Start a scheduler: `bullrq scheduler` (the Procfile's scheduler process).",
    "schedule_late": "Check that a scheduler runs (`bullrq scheduler`) and the entry is enabled "
                     "(`bullrq schedules show ID`).",
    "schedule_failed": "Read the entry's history (`bullrq schedules history ID`), fix the cause, then run it now.",
    "schedule_stuck": "Look at its job; `bullrq schedules reset ID` frees the entry.",
    "history_behind": "Check that PostgreSQL answers (`/readyz`) and workers run: they write the history.",
}


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    payload: dict  #: webhook body


def render(alert: dict, event: Event, settings: AlertSettings, now: datetime | None = None) -> Rendered:
    """The message telling that `alert` opened or cleared."""
    now = now or datetime.now(UTC)
    link = settings.link(_path(alert))
    where = ", ".join(f"{name} {value}" for name, value in (("queue", alert["queue"]), ("task", alert["task"]),
                      ("schedule", alert["schedule_id"])) if value)  # fmt: skip
    opened = alert["opened_at"] or alert["first_seen_at"]
    if event is Event.OPENED:
        subject = f"[bullrq] ALERT: {alert['summary']}"
        lines = [alert["summary"], ""]
        if where:
            lines.append(f"Where: {where}")
        lines.append(f"Since: {_at(alert['first_seen_at'])}")
        if alert["count"]:
            lines.append(f"Count: {alert['count']}")
        lines += _errors(alert)
        lines += ["", _ADVICE.get(alert["condition"], ""), "", f"See: {link}"]
    else:
        lasted = duration(((alert["cleared_at"] or now) - opened).total_seconds())
        subject = f"[bullrq] RESOLVED after {lasted}: {alert['summary']}"
        lines = [f"Resolved: {alert['summary']}", ""]
        if where:
            lines.append(f"Where: {where}")
        lines += [f"Opened: {_at(opened)}", f"Cleared: {_at(alert['cleared_at'] or now)} (after {lasted})"]
        if alert["count"]:
            lines.append(f"Count (last seen): {alert['count']}")
        lines += _errors(alert)
        lines += ["", f"See: {link}"]
    text = "\n".join(lines).strip()
    payload = {
        "event": f"alert.{event}",
        "alert": {
            "id": alert["id"], "key": alert["key"], "condition": alert["condition"], "summary": alert["summary"],
            "queue": alert["queue"], "task": alert["task"], "scheduleId": alert["schedule_id"],
            "count": alert["count"], "details": alert["details"], "firstSeenAt": alert["first_seen_at"].isoformat(),
            "openedAt": opened.isoformat(),
            "clearedAt": alert["cleared_at"].isoformat() if alert["cleared_at"] else None,
        },
        "subject": _one_line(subject, MAX_SUBJECT),
        "text": text,
        "url": link,
    }  # fmt: skip
    return Rendered(_one_line(subject, MAX_SUBJECT), text[:MAX_TEXT], payload)


def test_message(settings: AlertSettings, now: datetime | None = None) -> Rendered:
    """The message `bullrq alerts test` sends to every channel."""
    now = now or datetime.now(UTC)
    link = settings.link("/admin/#alerts")
    text = (f"A test of bullrq's alert channels, sent {_at(now)}. Alerts reach this address when jobs fail, queues "
            f"back up, or workers or the scheduler stop.\n\nSee: {link}")  # fmt: skip
    subject = "[bullrq] Test alert: this channel works"
    return Rendered(subject, text, {"event": "alert.test", "subject": subject, "text": text, "url": link})


def _path(alert: dict) -> str:
    details = alert["details"] or {}
    return details.get("path") or "/admin/#alerts"


def _errors(alert: dict) -> list[str]:
    top = (alert["details"] or {}).get("top_errors") or []
    if not top:
        return []
    return ["Top errors:"] + [f"  {e['count']} x {e['error']}" for e in top]


def _at(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _one_line(text: str, limit: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."
