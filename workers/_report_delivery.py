"""Who receives a report and what each recipient's `notifications.send` job carries (stdlib only: pure functions).

Each notification is keyed `report:<report id>:<channel>:<to>` (with a digest in place of `to` when the address
holds characters a dedup id cannot, such as a URL's ? and =, or the key would pass 200 characters). The key goes to
the notifications queue as `idempotencyKey` (it never sends the same key twice) and, as the job's dedup id, stops a
retried report from enqueueing a second job while the first is still pending.
Addresses are checked by the rules workers/notifications.py applies at enqueue, so a bad recipient fails the
report naming its schedule before anything is sent.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from app.recipients import Recipient, dedup_id

#: characters: the longest subject line sent
MAX_SUBJECT = 200


def idempotency_key(report_id: int, recipient: Recipient) -> str:
    """The notification's key (also its job's dedup id): the same for every run of the same report, distinct per
    report and recipient."""
    return dedup_id(f"report:{report_id}:{recipient.channel}:{recipient.to}")


@dataclass(frozen=True)
class Rendered:
    """A stored report as the notifications carry it."""

    report_id: int
    title: str
    subject: str
    text: str  #: plain-text summary (every channel)
    payload: dict  #: webhook body
    html: str | None = None
    csv: str | None = None
    pdf: bytes | None = None


def notification(report: Rendered, recipient: Recipient) -> tuple[dict, dict]:
    """The data and options of the `notifications.send` job that takes `report` to `recipient`."""
    key = idempotency_key(report.report_id, recipient)
    data = {
        "channel": recipient.channel,
        "to": recipient.to,
        "subject": one_line(report.subject, MAX_SUBJECT),
        "text": report.text,
        "idempotencyKey": key,
    }
    if recipient.channel == "email":
        if report.html is not None:
            data["html"] = report.html
        files = attachments(report.report_id, {"csv": report.csv, "pdf": report.pdf})
        if files:
            data["attachments"] = files
    elif recipient.channel == "webhook":
        data["payload"] = report.payload
    return data, {"jobId": key}


def one_line(text: str, limit: int) -> str:
    """`text` on one line (a subject is a single header line), cut to `limit` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def attachments(report_id: int, files: dict) -> list[dict]:
    """The CSV and PDF of `files` ({"csv": str, "pdf": bytes}, either may be absent or None) as attachments."""
    bodies = []
    if files.get("csv") is not None:
        bodies.append(("csv", "text/csv", files["csv"].encode("utf-8")))
    if files.get("pdf") is not None:
        bodies.append(("pdf", "application/pdf", files["pdf"]))
    return [
        {"filename": f"report-{report_id}.{extension}", "contentType": kind,
         "contentBase64": base64.b64encode(body).decode("ascii")}
        for extension, kind, body in bodies
    ]
