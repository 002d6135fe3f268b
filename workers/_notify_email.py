"""E-mail over SMTP (smtplib): settings, the MIME message, the send, and which SMTP failures are worth a retry.

SMTP replies say it themselves: 4xx is temporary (greylisting, mailbox busy, rate limit) and is retried, 5xx is
final (550 unknown recipient, 535 bad credentials) and fails the job naming the code. A refused connection, a
timeout or a dropped connection is retried too.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import smtplib
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, parseaddr

from app.config import env_number, environment
from app.errors import BullrqError, ConfigError, PermanentFailure, ServiceUnavailableError

logger = logging.getLogger(__name__)

SECURITY_MODES = ("none", "starttls", "tls")
#: TCP ports used when SMTP_PORT is unset: submission with STARTTLS, submissions with implicit TLS
DEFAULT_PORT = 587
DEFAULT_TLS_PORT = 465
#: seconds for connecting and for each SMTP reply (the queue's job timeout is 60 s)
DEFAULT_TIMEOUT = 20.0
MAX_TIMEOUT = 55.0


@dataclass(frozen=True)
class SmtpSettings:
    """How to reach the SMTP server (SMTP_* variables)."""

    host: str
    port: int
    security: str  #: none, starttls or tls
    sender: str  #: the From header, e.g. "Reports <reports@example.com>"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = DEFAULT_TIMEOUT  #: seconds

    @property
    def envelope_sender(self) -> str:
        """The bare address of SMTP_FROM (MAIL FROM)."""
        return parseaddr(self.sender)[1]

    @property
    def domain(self) -> str:
        return self.envelope_sender.rpartition("@")[2]

    @classmethod
    def from_env(cls, env: dict | None = None) -> SmtpSettings:
        """The settings from the environment (and `.env`).

        Raises:
            ConfigError: e-mail is not configured, or a variable holds a bad value (the message names it).
        """
        env = environment(env)
        host = env.get("SMTP_HOST", "").strip()
        if not host:
            raise ConfigError("e-mail is not configured: set SMTP_HOST (and SMTP_FROM)")
        security = env.get("SMTP_SECURITY", "").strip().lower() or "starttls"
        if security not in SECURITY_MODES:
            raise ConfigError(f"SMTP_SECURITY={security!r} must be one of {', '.join(SECURITY_MODES)}")
        default_port = DEFAULT_TLS_PORT if security == "tls" else DEFAULT_PORT
        port = env_number(env, "SMTP_PORT", default_port, 1, 65535, "TCP port")
        if port != int(port):
            raise ConfigError(f"SMTP_PORT={env['SMTP_PORT']!r} is not a whole TCP port number")
        sender = env.get("SMTP_FROM", "").strip()
        address = parseaddr(sender)[1]
        if not sender or "@" not in address or address.startswith("@") or address.endswith("@"):
            raise ConfigError("SMTP_FROM must be set to the sender's address, e.g. Reports <reports@example.com>")
        username = env.get("SMTP_USERNAME") or None
        password = env.get("SMTP_PASSWORD") or None
        if (username is None) != (password is None):
            missing = "SMTP_PASSWORD" if password is None else "SMTP_USERNAME"
            raise ConfigError(f"{missing} must be set too: SMTP AUTH needs SMTP_USERNAME and SMTP_PASSWORD")
        timeout = env_number(env, "SMTP_TIMEOUT", DEFAULT_TIMEOUT, 1, MAX_TIMEOUT, "seconds")
        return cls(host, int(port), security, sender, username, password, timeout)


def message_id(key: str, domain: str) -> str:
    """The Message-ID of the e-mail sent under idempotency key `key`: the same for every attempt."""
    return f"<{hashlib.sha256(key.encode()).hexdigest()[:32]}.notification@{domain}>"


def build_message(settings: SmtpSettings, message) -> EmailMessage:
    """The MIME message of `message` (a `_notify_channels.Message`): text and/or html, then the attachments."""
    mail = EmailMessage()
    mail["From"] = settings.sender
    mail["To"] = message.to
    if message.subject:
        mail["Subject"] = message.subject
    mail["Date"] = formatdate(usegmt=True)
    mail["Message-ID"] = message_id(message.key, settings.domain)
    if message.html and message.text is None:
        mail.set_content(message.html, subtype="html")
    else:
        mail.set_content(message.text or "")
        if message.html:
            mail.add_alternative(message.html, subtype="html")
    for item in message.attachments:
        maintype, _, subtype = item["contentType"].partition("/")
        data = base64.b64decode(item["contentBase64"], validate=True)
        mail.add_attachment(data, maintype=maintype, subtype=subtype, filename=item["filename"])
    return mail


def send_email(settings: SmtpSettings, mail: EmailMessage) -> str:
    """Send `mail` to its To address; returns its Message-ID.

    Raises:
        PermanentFailure: a 5xx reply or a setting the server cannot work with (names the SMTP code).
        ServiceUnavailableError: a 4xx reply, a refused or dropped connection, a timeout.
    """
    try:
        smtp = _connect(settings)
        try:
            _authenticate(smtp, settings)
            smtp.send_message(mail, from_addr=settings.envelope_sender, to_addrs=[str(mail["To"])])
        finally:
            _close(smtp)
    except (smtplib.SMTPException, OSError) as exc:
        raise classify(exc, settings) from None
    logger.info("smtp %s:%d accepted %s", settings.host, settings.port, mail["Message-ID"])
    return str(mail["Message-ID"])


def _connect(settings: SmtpSettings) -> smtplib.SMTP:
    if settings.security == "tls":
        context = ssl.create_default_context()
        return smtplib.SMTP_SSL(settings.host, settings.port, timeout=settings.timeout, context=context)
    return smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout)


def _authenticate(smtp: smtplib.SMTP, settings: SmtpSettings) -> None:
    smtp.ehlo()
    if settings.security == "starttls":
        smtp.starttls(context=ssl.create_default_context())
        smtp.ehlo()
    if settings.username is not None:
        smtp.login(settings.username, settings.password)


def _close(smtp: smtplib.SMTP) -> None:
    """Say QUIT; once the message is accepted, a failure here must not turn a delivery into a retry."""
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        smtp.close()


def classify(exc: BaseException, settings: SmtpSettings) -> BullrqError:
    """The job failure an SMTP error stands for: permanent for 5xx replies and bad settings, else transient."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        code, reply = next(iter(exc.recipients.values()), (-1, b""))
        return _by_code(code, reply, "recipient refused")
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return PermanentFailure(f"SMTP server {settings.host}: {exc} (check SMTP_SECURITY and SMTP_USERNAME)")
    if isinstance(exc, smtplib.SMTPResponseException):
        return _by_code(exc.smtp_code, exc.smtp_error, _what(exc))
    if isinstance(exc, ssl.SSLCertVerificationError):
        return PermanentFailure(f"SMTP server {settings.host}: TLS certificate not trusted: {exc.verify_message}")
    # every SMTPException is an OSError: only a dropped connection among them is worth a retry
    if isinstance(exc, smtplib.SMTPServerDisconnected) or not isinstance(exc, smtplib.SMTPException):
        return ServiceUnavailableError(f"SMTP server {settings.host}:{settings.port}: {type(exc).__name__}: {exc}")
    return PermanentFailure(f"SMTP server {settings.host}: {exc}")  # e.g. no AUTH mechanism in common


def _what(exc: smtplib.SMTPResponseException) -> str:
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return "authentication failed (check SMTP_USERNAME and SMTP_PASSWORD)"
    if isinstance(exc, smtplib.SMTPSenderRefused):
        return "sender refused (check SMTP_FROM)"
    if isinstance(exc, smtplib.SMTPDataError):
        return "message refused"
    if isinstance(exc, smtplib.SMTPConnectError | smtplib.SMTPHeloError):
        return "greeting refused"
    return "error"


def _by_code(code: int, reply: bytes | str, what: str) -> BullrqError:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    message = f"SMTP {code} {what}: {text.strip()[:300]}"
    if 500 <= code <= 599:
        return PermanentFailure(message)
    return ServiceUnavailableError(message)
