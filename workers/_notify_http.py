"""Signed webhooks and WhatsApp through a provider's HTTP API, both over `app.http` (its one retry rule).

Webhook request: POST `to`, body = the payload as compact UTF-8 JSON, headers `Content-Type: application/json`,
`Idempotency-Key`, `X-Bullrq-Timestamp: <unix seconds>`, `X-Bullrq-Signature: sha256=<hex HMAC-SHA256 of
"<timestamp>.<body>" with WEBHOOK_SIGNING_SECRET>`.
WhatsApp request: POST WHATSAPP_API_URL with `Authorization: Bearer <WHATSAPP_API_TOKEN>`, `Idempotency-Key`, and
JSON `{"from": WHATSAPP_FROM, "to": "+E164", "text": "...", "idempotencyKey": "..."}`; the provider's message id
is read from the answer's `id`, `messageId`, `message_id`, `sid` or `messages[0].id`.
Redirects are not followed: a 3xx answer is a permanent failure (configure the final URL).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from app.config import env_url, environment
from app.errors import ConfigError, PermanentFailure

#: seconds: the longest wait for a webhook receiver or the WhatsApp provider (the queue's job timeout is 60 s)
HTTP_TIMEOUT = 20.0
#: characters: the shortest signing secret accepted
MIN_SECRET = 16
SIGNATURE_HEADER = "X-Bullrq-Signature"
TIMESTAMP_HEADER = "X-Bullrq-Timestamp"


@dataclass(frozen=True)
class WebhookSettings:
    """The secret webhooks are signed with (WEBHOOK_SIGNING_SECRET)."""

    secret: bytes = field(repr=False)

    @classmethod
    def from_env(cls, env: dict | None = None) -> WebhookSettings:
        """The settings from the environment (and `.env`).

        Raises:
            ConfigError: the secret is missing or too short (the message names the variable, never the value).
        """
        secret = environment(env).get("WEBHOOK_SIGNING_SECRET", "")
        if not secret:
            raise ConfigError("webhooks are not configured: set WEBHOOK_SIGNING_SECRET")
        if len(secret) < MIN_SECRET:
            raise ConfigError(f"WEBHOOK_SIGNING_SECRET is too short: use at least {MIN_SECRET} characters")
        return cls(secret.encode())


@dataclass(frozen=True)
class WhatsAppSettings:
    """The WhatsApp provider's HTTP API (WHATSAPP_* variables)."""

    api_url: str
    token: str = field(repr=False)
    sender: str  #: WHATSAPP_FROM: the sending number or the provider's id for it

    @classmethod
    def from_env(cls, env: dict | None = None) -> WhatsAppSettings:
        """The settings from the environment (and `.env`).

        Raises:
            ConfigError: a variable is missing or holds a bad value (the message names it).
        """
        env = environment(env)
        url = env_url(env, "WHATSAPP_API_URL", ("http", "https"))
        for name, value in (("WHATSAPP_API_URL", url), ("WHATSAPP_API_TOKEN", env.get("WHATSAPP_API_TOKEN"))):
            if not value:
                raise ConfigError(f"WhatsApp is not configured: set {name}")
        sender = env.get("WHATSAPP_FROM", "").strip()
        if not sender:
            raise ConfigError("WhatsApp is not configured: set WHATSAPP_FROM")
        return cls(url, env["WHATSAPP_API_TOKEN"].strip(), sender)


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """The X-Bullrq-Signature value: `sha256=` and the hex HMAC-SHA256 of `<timestamp>.<body>`."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def webhook_request(settings: WebhookSettings, key: str, payload: dict, now: float | None = None):
    """The body and headers of a webhook delivery, signed at `now` (default: the current time)."""
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    timestamp = str(int(time.time() if now is None else now))
    headers = {
        "Content-Type": "application/json",
        "Idempotency-Key": key,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: signature(settings.secret, timestamp, body),
    }
    return body, headers


def whatsapp_text(subject: str | None, text: str | None) -> str:
    """The WhatsApp message: the subject, a blank line and the text (either alone when the other is missing)."""
    return "\n\n".join(part for part in (subject, text) if part)


def send_webhook(settings: WebhookSettings, url: str, key: str, payload: dict) -> str | None:
    """POST the signed payload to `url`; returns the receiver's X-Request-Id, if it sends one.

    Raises:
        ServiceUnavailableError: the receiver cannot be reached or answered 408, 429 or 5xx.
        PermanentFailure: any other 4xx (a wrong signature, 401, included), or a redirect.
    """
    from app import http

    service = f"webhook {urlsplit(url).hostname}"
    body, headers = webhook_request(settings, key, payload)
    response = http.request("POST", url, service=service, content=body, headers=headers, timeout=HTTP_TIMEOUT)
    _refuse_redirect(response, service)
    return response.headers.get("X-Request-Id")


def send_whatsapp(settings: WhatsAppSettings, message) -> str | None:
    """Send `message` (a `_notify_channels.Message`) through the provider; returns the provider's message id.

    Raises:
        ServiceUnavailableError: the provider cannot be reached or answered 408, 429 or 5xx.
        PermanentFailure: any other 4xx (bad token, unknown number), or a redirect.
    """
    from app import http

    body = {"from": settings.sender, "to": message.to, "text": whatsapp_text(message.subject, message.text)}
    body["idempotencyKey"] = message.key
    headers = {"Authorization": f"Bearer {settings.token}", "Idempotency-Key": message.key}
    response = http.request(
        "POST", settings.api_url, service="WhatsApp provider", json=body, headers=headers, timeout=HTTP_TIMEOUT
    )
    _refuse_redirect(response, "WhatsApp provider")
    return provider_message_id(response)


def provider_message_id(response) -> str | None:
    """The message id in a provider's JSON answer (common shapes: Meta Cloud API, Twilio, generic), or None."""
    try:
        answer = response.json()
    except ValueError:
        return None
    if not isinstance(answer, dict):
        return None
    for name in ("id", "messageId", "message_id", "sid"):
        if isinstance(answer.get(name), str | int):
            return str(answer[name])
    messages = answer.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[0], dict) and messages[0].get("id"):
        return str(messages[0]["id"])
    return None


def _refuse_redirect(response, service: str) -> None:
    if response.status_code >= 300:
        raise PermanentFailure(f"{service}: HTTP {response.status_code}: redirects are not followed; use the final URL")
