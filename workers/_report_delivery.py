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
import hashlib
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

#: the channels the notifications queue delivers to
CHANNELS = ("email", "webhook", "whatsapp")
#: the most recipients one schedule may list
MAX_RECIPIENTS = 50
#: characters a dedup id (option jobId) may hold; the same rule as app.enqueue applies to it
_DEDUP_ID = re.compile(r"^[A-Za-z0-9._:/@-]{1,200}$")
#: characters: the longest subject line sent
MAX_SUBJECT = 200
#: characters: the longest e-mail address and webhook URL the notifications queue takes
MAX_ADDRESS, MAX_URL = 254, 2048
_EMAIL = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)
_E164 = re.compile(r"^\+[1-9][0-9]{7,14}$")


@dataclass(frozen=True)
class Recipient:
    """One destination of a report."""

    channel: str  #: email, webhook or whatsapp
    to: str  #: an e-mail address, an http(s) URL or a phone number


def check_recipient(channel: object, to: object) -> Recipient:
    """The recipient (`channel`, `to`).

    Raises:
        ValueError: the channel is unknown or the address does not fit it; the message never repeats the address
            (webhook URLs may carry tokens).
    """
    if channel not in CHANNELS:
        raise ValueError(f"channel must be one of {', '.join(CHANNELS)}")
    if not isinstance(to, str) or not to.strip():
        raise ValueError(f"{channel} recipient needs a non-empty 'to'")
    to = to.strip()
    if channel == "whatsapp":
        to = re.sub(r"[\s().-]", "", to)  # +351 911-111-111 is written for people; providers take +351911111111
    valid = {
        "email": lambda: len(to) <= MAX_ADDRESS and bool(_EMAIL.match(to)),
        "webhook": lambda: _is_http_url(to),
        "whatsapp": lambda: bool(_E164.match(to)),
    }[channel]()
    if not valid:
        expected = {"email": "an e-mail address", "webhook": "an http(s) URL with a host",
                    "whatsapp": "an E.164 phone number (+ then 8 to 15 digits)"}
        raise ValueError(f"{channel} recipient must be {expected[channel]}")
    return Recipient(channel, to)


def _is_http_url(value: str) -> bool:
    if len(value) > MAX_URL or any(c.isspace() or ord(c) < 32 for c in value):
        return False
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def parse_recipients(raw: object) -> list[Recipient]:
    """Recipients from a schedule's JSON list `[{"channel", "to"}]`.

    Raises:
        ValueError: the list or one of its entries is malformed (the message says which entry).
    """
    if not isinstance(raw, list):
        raise ValueError("recipients must be a JSON list of {channel, to}")
    if len(raw) > MAX_RECIPIENTS:
        raise ValueError(f"recipients holds {len(raw)} entries; at most {MAX_RECIPIENTS}")
    recipients = []
    for index, entry in enumerate(raw, 1):
        if not isinstance(entry, dict):
            raise ValueError(f"recipient {index} must be an object {{channel, to}}")
        try:
            recipients.append(check_recipient(entry.get("channel"), entry.get("to")))
        except ValueError as exc:
            raise ValueError(f"recipient {index}: {exc}") from None
    return _unique(recipients)


def parse_recipient_list(text: str) -> list[Recipient]:
    """Recipients from comma-separated `channel:address` entries (`email:ops@example.com,webhook:https://...`).

    Raises:
        ValueError: an entry is malformed (the message says which one, by position).
    """
    recipients = []
    for index, entry in enumerate((part.strip() for part in text.split(",")), 1):
        if not entry:
            continue
        channel, sep, to = entry.partition(":")
        if not sep:
            raise ValueError(f"entry {index} must look like channel:address (channel: {', '.join(CHANNELS)})")
        try:
            recipients.append(check_recipient(channel.strip().lower(), to))
        except ValueError as exc:
            raise ValueError(f"entry {index}: {exc}") from None
    return _unique(recipients)


def _unique(recipients: list[Recipient]) -> list[Recipient]:
    """The recipients without repeats (a repeated one would get one message anyway: same key)."""
    return list(dict.fromkeys(recipients))


def idempotency_key(report_id: int, recipient: Recipient) -> str:
    """The notification's key (also its job's dedup id): the same for every run of the same report, distinct per
    report and recipient."""
    return dedup_id(f"report:{report_id}:{recipient.channel}:{recipient.to}")


def dedup_id(key: str) -> str:
    """`key` as a job dedup id: itself when its characters are allowed there, else its first three `:` fields and a
    digest of the whole (URLs hold ? and =, phone numbers +)."""
    if _DEDUP_ID.match(key):
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()[:40]
    candidate = ":".join(key.split(":", 3)[:3] + [digest])
    return candidate if _DEDUP_ID.match(candidate) else f"report:{digest}"


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
