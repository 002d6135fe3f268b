"""One message of notifications.send, and the sender of its channel with that channel's settings read."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field

from app.config import redact
from app.errors import ConfigError, PermanentFailure


@dataclass(frozen=True)
class Message:
    """What notifications.send was asked to deliver (already validated at enqueue)."""

    channel: str
    to: str
    subject: str | None
    text: str | None
    html: str | None
    attachments: list = field(repr=False)
    payload: dict | None = field(repr=False)
    key: str  #: the idempotency key

    @property
    def recipient_label(self) -> str:
        """The recipient as the outbox and the result show it (a URL's password hidden)."""
        return redact(self.to) if self.channel == "webhook" else self.to

    @property
    def content_hash(self) -> str:
        """A digest of everything the recipient gets (not the key): equal for a retry, different for a new message."""
        content = [self.channel, self.to, self.subject, self.text, self.html, self.attachments, self.payload]
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def webhook_payload(self) -> dict:
        return self.payload if self.payload is not None else {"subject": self.subject, "text": self.text}


def prepare(message: Message) -> Callable[[], str | None]:
    """The send of `message`, its channel's settings read now; the send returns the provider's message id.

    Raises:
        PermanentFailure: the channel is not configured, or a setting is invalid (the message names the variable).
    """
    from workers import _notify_email as email
    from workers import _notify_http as http

    try:
        if message.channel == "email":
            smtp = email.SmtpSettings.from_env()
            return lambda: email.send_email(smtp, email.build_message(smtp, message))
        if message.channel == "webhook":
            hook = http.WebhookSettings.from_env()
            return lambda: http.send_webhook(hook, message.to, message.key, message.webhook_payload)
        whatsapp = http.WhatsAppSettings.from_env()
        return lambda: http.send_whatsapp(whatsapp, message)
    except ConfigError as exc:
        raise PermanentFailure(str(exc)) from None
