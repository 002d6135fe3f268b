"""The `notifications` queue: e-mail over SMTP, signed webhooks and WhatsApp, each message sent once per key.

Task types:
    notifications.send  data: {"channel": "email" | "webhook" | "whatsapp", "to": str, "subject"?: str,
                        "text"?: str, "html"?: str, "attachments"?: [{"filename", "contentType", "contentBase64"}]
                        (email only), "payload"?: object (webhook only: the JSON body, default
                        {"subject", "text"}), "idempotencyKey"?: str (default: the job id)}
                        `to` is an e-mail address, an http(s) URL or an E.164 phone number (+ and 8-15 digits),
                        by channel. Everything is checked at enqueue: bad data never reaches a worker.

Environment (read per job, so a channel left unconfigured fails only its own jobs, naming the variable):
    SMTP_HOST, SMTP_PORT (587; 465 with tls), SMTP_SECURITY (none | starttls | tls, default starttls),
    SMTP_USERNAME + SMTP_PASSWORD (AUTH when set), SMTP_FROM (required), SMTP_TIMEOUT (seconds, default 20)
    WEBHOOK_SIGNING_SECRET (required for webhooks, at least 16 characters)
    WHATSAPP_API_URL, WHATSAPP_API_TOKEN (sent as a Bearer token), WHATSAPP_FROM

Exactly once, as far as it can be had. Each message has a row in `notification_outbox` under its idempotency key.
Under a PostgreSQL advisory lock on the key (a second job with the same key waits for the first), the handler
commits status `sending` before it talks to the provider and `sent` after the provider accepted the message; a key
already `sent` completes the job at once with result status "already sent". A failed send records `failed` with
the error, and a retry of the job (or a new job with the key) tries again. (A timeout while the server had the
message, before its reply, is also recorded `failed`: that retry, too, may deliver a copy with the same identity.)
The crash window: if the worker dies after the provider accepted the message but before `sent` is committed, the
row stays `sending` and the retried job sends again (at least once, never silently lost), reporting
`previous_outcome_unknown` in its result. That second copy carries the same downstream identity, so the far side
can drop it: e-mails keep their Message-ID (derived from the key), webhooks repeat the `Idempotency-Key` header,
and the WhatsApp provider receives the key (header `Idempotency-Key` and field `idempotencyKey`).

Webhook signatures: `X-Bullrq-Timestamp: <unix seconds>` and `X-Bullrq-Signature: sha256=<hex>`, the HMAC-SHA256
with WEBHOOK_SIGNING_SECRET of `<timestamp>.<exact body bytes>`. A receiver recomputes it over the raw body,
compares in constant time, refuses timestamps older than a few minutes (a replayed request keeps its old
timestamp, and changing it breaks the signature) and drops repeated Idempotency-Keys (each retry is signed anew).

Failures: a 4xx SMTP reply, a refused connection or a timeout, HTTP 408/429/5xx are retried under the queue's
policy (5 attempts); a 5xx SMTP reply (e.g. 550 recipient refused, 535 bad credentials), any other HTTP 4xx, and
a channel left unconfigured fail the job at once, naming the SMTP code, the HTTP status or the variable.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from urllib.parse import urlsplit

from app.errors import InvalidJobError, PermanentFailure
from app.tasks import task
from workers._notify_http import whatsapp_text

logger = logging.getLogger(__name__)

TASK = "notifications.send"
CHANNELS = ("email", "webhook", "whatsapp")
#: characters: the longest e-mail address (RFC 5321 path limit)
MAX_ADDRESS = 254
#: characters: the longest webhook URL
MAX_URL = 2048
#: characters: the longest subject (it is a single header line)
MAX_SUBJECT = 500
#: characters: the longest text or html body
MAX_BODY = 1_000_000
#: characters: the longest WhatsApp message (the providers' limit for a text message)
MAX_WHATSAPP_TEXT = 4096
#: attachments per e-mail
MAX_ATTACHMENTS = 20
#: bytes: decoded attachments per e-mail (job data lives in Redis, and most servers refuse more than ~25 MB)
MAX_ATTACHMENT_BYTES = 10 * 1024 * 1024

_EMAIL = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)
_E164 = re.compile(r"^\+[1-9][0-9]{7,14}$")
#: a key goes into headers and SQL as is: visible ASCII only
_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")
_CONTENT_TYPE = re.compile(r"^[A-Za-z0-9][\w.+-]*/[A-Za-z0-9][\w.+-]*$")
_ATTACHMENT_FIELDS = {"filename", "contentType", "contentBase64"}


def _invalid(message: str) -> InvalidJobError:
    return InvalidJobError(f"{TASK}: {message}")


def check_recipient(channel: str, to: object) -> None:
    """Raise InvalidJobError unless `to` is an address of `channel` (e-mail address, http(s) URL, E.164 number)."""
    if not isinstance(to, str) or not to:
        raise _invalid("'to' must be a non-empty string")
    if channel == "email":
        if len(to) > MAX_ADDRESS or not _EMAIL.match(to):
            raise _invalid(f"'to' must be an e-mail address like name@example.com, not {to[:80]!r}")
    elif channel == "whatsapp":
        if not _E164.match(to):
            raise _invalid(f"'to' must be an E.164 phone number (+ then 8 to 15 digits), not {to[:40]!r}")
    elif not _is_http_url(to):
        raise _invalid("'to' must be an http:// or https:// URL with a host, no spaces, at most 2048 characters")


def _is_http_url(value: str) -> bool:
    if len(value) > MAX_URL or any(c.isspace() or ord(c) < 32 for c in value):
        return False
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number from 0 to 65535
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def check_attachments(attachments: object) -> int:
    """Raise InvalidJobError unless `attachments` is a list of well-formed attachments; returns their decoded size."""
    if not isinstance(attachments, list):
        raise _invalid("'attachments' must be a list of {filename, contentType, contentBase64}")
    if len(attachments) > MAX_ATTACHMENTS:
        raise _invalid(f"at most {MAX_ATTACHMENTS} attachments per e-mail")
    total = 0
    for number, item in enumerate(attachments, 1):
        where = f"attachment {number}"
        if not isinstance(item, dict) or set(item) != _ATTACHMENT_FIELDS:
            raise _invalid(f"{where} must have exactly the keys filename, contentType, contentBase64")
        filename, content_type, content = item["filename"], item["contentType"], item["contentBase64"]
        if not isinstance(filename, str) or not 0 < len(filename) <= 255 or re.search(r"[/\\\x00-\x1f\x7f]", filename):
            raise _invalid(f"{where}: filename must be a plain file name (no path, no control characters)")
        if not isinstance(content_type, str) or not _CONTENT_TYPE.match(content_type):
            raise _invalid(f"{where} ({filename}): contentType must look like type/subtype, e.g. application/pdf")
        if not isinstance(content, str):
            raise _invalid(f"{where} ({filename}): contentBase64 must be a base64 string")
        try:
            total += len(base64.b64decode(content, validate=True))
        except (binascii.Error, ValueError):
            raise _invalid(f"{where} ({filename}): contentBase64 is not valid base64") from None
    if total > MAX_ATTACHMENT_BYTES:
        raise _invalid(f"attachments hold {total} bytes; at most {MAX_ATTACHMENT_BYTES} per e-mail")
    return total


def _check_texts(kwargs: dict) -> None:
    for name, limit in (("subject", MAX_SUBJECT), ("text", MAX_BODY), ("html", MAX_BODY)):
        value = kwargs.get(name)
        if value is not None and not isinstance(value, str):
            raise _invalid(f"'{name}' must be a string")
        if value is not None and len(value) > limit:
            raise _invalid(f"'{name}' is longer than {limit} characters")
    if re.search(r"[\r\n]", kwargs.get("subject") or ""):
        raise _invalid("'subject' must be a single line")


def _check_channel_content(channel: str, kwargs: dict) -> None:
    subject, text, html, payload = (kwargs.get(k) for k in ("subject", "text", "html", "payload"))
    if kwargs.get("attachments") is not None:
        if channel != "email" and kwargs["attachments"] != []:
            raise _invalid(f"attachments are sent by e-mail only, not by {channel}")
        check_attachments(kwargs["attachments"])
    if payload is not None and channel != "webhook":
        raise _invalid(f"'payload' is the body of a webhook; the {channel} channel sends subject and text")
    if payload is not None and not isinstance(payload, dict):
        raise _invalid("'payload' must be a JSON object")
    if channel == "email" and not (subject or text or html):
        raise _invalid("an e-mail needs a subject, a text or an html body")
    if channel == "webhook" and payload is None and not (subject or text):
        raise _invalid("a webhook needs a payload, a subject or a text")
    if channel == "whatsapp":
        if html is not None:
            raise _invalid("WhatsApp messages are plain text: send 'text', not 'html'")
        message = whatsapp_text(subject, text)
        if not message:
            raise _invalid("a WhatsApp message needs a text or a subject")
        if len(message) > MAX_WHATSAPP_TEXT:
            raise _invalid(f"a WhatsApp message holds at most {MAX_WHATSAPP_TEXT} characters (subject + text)")


def validate_send(kwargs: dict) -> None:
    """Check the data of notifications.send at enqueue; raises InvalidJobError saying what is wrong."""
    channel = kwargs.get("channel")
    if channel not in CHANNELS:
        raise _invalid(f"channel must be one of {', '.join(CHANNELS)}, not {str(channel)[:40]!r}")
    check_recipient(channel, kwargs.get("to"))
    _check_texts(kwargs)
    _check_channel_content(channel, kwargs)
    key = kwargs.get("idempotency_key")
    if key is not None and (not isinstance(key, str) or not _KEY.match(key)):
        raise _invalid("'idempotencyKey' must be 1 to 200 visible ASCII characters (no spaces)")


@task(TASK, queue="notifications", validate=validate_send)
def send(
    channel: str,
    to: str,
    subject: str | None = None,
    text: str | None = None,
    html: str | None = None,
    attachments: list | None = None,
    payload: dict | None = None,
    idempotency_key: str | None = None,
) -> dict:
    """Deliver one message by e-mail, signed webhook or WhatsApp, once per idempotency key."""
    from app.runtime import progress
    from workers import _notify_outbox as outbox
    from workers._notify_channels import Message, prepare

    job = progress.current_job()
    key = idempotency_key or (job.id if job is not None else None)
    if not key:
        raise PermanentFailure(f"{TASK}: no idempotencyKey and no running job to take one from")
    message = Message(channel, to, subject, text, html, attachments or [], payload, key)
    deliver = prepare(message)  # reads the channel's settings first: an unconfigured channel touches nothing
    progress.report(percent=10, message=f"{channel}: waiting for key {key}", processed=0, failed=0)
    with outbox.claim(key, channel, message.recipient_label, job.id if job is not None else key,
                      message.content_hash) as claim:
        if claim.already_sent:
            logger.info("notification %s: already sent by job %s, nothing to do", key, claim.row["job_id"])
            progress.report(percent=100, message="already sent", processed=0, failed=0)
            return _result("already sent", message, claim.row)
        if claim.previous_outcome_unknown:
            logger.warning("notification %s: an earlier attempt ended mid-send; sending again with the same key", key)
        progress.report(percent=30, message=f"sending by {channel}")
        try:
            provider_id = deliver()
        except Exception as exc:  # recorded, then re-raised: the worker decides between retry and failure
            claim.failed(f"{type(exc).__name__}: {exc}")
            progress.report(message=f"{channel}: {exc}"[:500], processed=0, failed=1)
            raise
        row = claim.sent(provider_id)
    logger.info("notification %s: sent by %s (attempt %d)", key, channel, row["attempts"])
    progress.report(percent=100, message=f"sent by {channel}", processed=1, failed=0)
    return {**_result("sent", message, row), "previous_outcome_unknown": claim.previous_outcome_unknown}


def _result(status: str, message, row: dict) -> dict:
    sent_at = row.get("sent_at")
    return {
        "status": status,
        "channel": message.channel,
        "to": message.recipient_label,
        "idempotency_key": message.key,
        "provider_message_id": row.get("provider_message_id"),
        "attempts": row.get("attempts"),
        "sent_at": sent_at.isoformat() if sent_at else None,
        "sent_by_job": row.get("job_id"),
    }
