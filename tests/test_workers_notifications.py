"""The notifications queue end to end: a real worker sends e-mail to an aiosmtpd server on loopback, signed webhooks
and WhatsApp requests to a loopback HTTP service, and the outbox keeps a retried or repeated job from sending twice.
"""

from __future__ import annotations

import base64
import dataclasses
import email
import email.policy
import hashlib
import hmac
import smtplib
import socket
import threading
import time

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from app.errors import ConfigError, InvalidJobError, PermanentFailure, ServiceUnavailableError
from app.runtime.control import run_now
from app.tasks import get_task
from tests.fixtures import wait_for
from workers import _notify_email, _notify_http
from workers._notify_channels import Message
from workers.notifications import MAX_WHATSAPP_TEXT

pytest_plugins = ["tests.worker_processes", "tests.handler_runs", "tests.http_service"]

SECRET = "whsec-0123456789abcdef-test"
SENDER = "Reports <reports@example.com>"
#: retries at once: the tests must stay fast
QUICK_RETRY = {"attempts": 3, "backoff": {"type": "fixed", "delay": 0}}
PDF_BYTES = b"%PDF-1.4\n\x00\x01\x02\xff binary attachment\n%%EOF\n"


# -- loopback services -------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Inbox:
    """An aiosmtpd handler that keeps every accepted message and refuses the recipients it is told to."""

    def __init__(self):
        self.envelopes = []
        self.refuse: dict[str, str] = {}

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append(envelope)
        return "250 2.0.0 OK queued"

    def messages(self) -> list[email.message.EmailMessage]:
        return [email.message_from_bytes(e.content, policy=email.policy.default) for e in self.envelopes]


class SmtpServers:
    def __init__(self):
        self.controllers = []

    def start(self, port: int | None = None, credentials: tuple[bytes, bytes] | None = None) -> tuple[Inbox, int]:
        """An SMTP server on 127.0.0.1 (requiring AUTH with `credentials` when given); returns its inbox and port."""
        inbox, port = Inbox(), port or free_port()
        kwargs = {}
        if credentials is not None:

            def authenticator(server, session, envelope, mechanism, auth_data):
                ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == credentials
                return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535

            kwargs = {"authenticator": authenticator, "auth_required": True, "auth_require_tls": False}
        controller = Controller(inbox, hostname="127.0.0.1", port=port, **kwargs)
        controller.start()
        self.controllers.append(controller)
        return inbox, port


@pytest.fixture
def smtp_servers():
    servers = SmtpServers()
    yield servers
    for controller in servers.controllers:
        controller.stop()


@pytest.fixture
def smtp_env(monkeypatch):
    """Point the worker's e-mail settings at a loopback port (no TLS: aiosmtpd runs without a certificate)."""

    def configure(port: int, **extra: str) -> None:
        monkeypatch.setenv("SMTP_HOST", "127.0.0.1")
        monkeypatch.setenv("SMTP_PORT", str(port))
        monkeypatch.setenv("SMTP_SECURITY", "none")
        monkeypatch.setenv("SMTP_FROM", SENDER)
        monkeypatch.setenv("SMTP_TIMEOUT", "15")  # roomy: a loaded test machine must not turn replies into timeouts
        for name, value in extra.items():
            monkeypatch.setenv(name, value)

    return configure


def verified(secret: str, request) -> bool:
    """What a webhook receiver does: recompute the HMAC over timestamp + "." + raw body, compare in constant time."""
    timestamp = request.headers.get("x-bullrq-timestamp", "")
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + request.body, hashlib.sha256).hexdigest()
    fresh = timestamp.isdigit() and abs(time.time() - int(timestamp)) < 300
    return fresh and hmac.compare_digest(request.headers.get("x-bullrq-signature", ""), f"sha256={expected}")


class Receiver:
    """A webhook endpoint that checks signatures with `secret` and answers 503 to its first `fail_first` calls."""

    def __init__(self, secret: str, fail_first: int = 0, hold: threading.Event | None = None):
        self.secret, self.fail_first, self.hold = secret, fail_first, hold
        self.answers: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, request):
        if self.hold is not None:  # answer only once the test lets it (at most a minute)
            self.hold.wait(60)
        with self.lock:
            if len(self.answers) < self.fail_first:
                status = 503
            else:
                status = 200 if verified(self.secret, request) else 401
            self.answers.append(status)
        return status, {"X-Request-Id": f"req-{len(self.answers)}"}, {"ok": status == 200}


def outbox_row(handlers, key: str) -> dict | None:
    with handlers.db() as conn:
        return conn.execute("SELECT * FROM notification_outbox WHERE idempotency_key = %s", (key,)).fetchone()


# -- e-mail ------------------------------------------------------------------------------------------------------


def test_email_with_attachment_reaches_the_smtp_server_once_per_key(handlers, smtp_servers, smtp_env):
    inbox, port = smtp_servers.start()
    smtp_env(port)
    handlers.start("notifications")
    data = {
        "channel": "email",
        "to": "alice@example.com",
        "subject": "Relatório semanal",
        "text": "Hello Alice,\nthe report is attached.",
        "html": "<p>Hello Alice, the report is attached.</p>",
        "attachments": [
            {
                "filename": "report.pdf",
                "contentType": "application/pdf",
                "contentBase64": base64.b64encode(PDF_BYTES).decode(),
            }
        ],
        "idempotencyKey": "report-42:alice",
    }

    job = handlers.run("notifications.send", data)

    assert job["status"] == "completed", job["error"]
    assert job["result"]["status"] == "sent"
    assert job["progress"]["processed"] == 1 and job["progress"]["failed"] == 0
    [envelope] = inbox.envelopes
    assert envelope.mail_from == "reports@example.com" and envelope.rcpt_tos == ["alice@example.com"]
    [mail] = inbox.messages()
    assert mail["Subject"] == "Relatório semanal" and mail["To"] == "alice@example.com"
    plain = mail.get_body(("plain",)).get_content().replace("\r\n", "\n")  # SMTP carries CRLF line ends
    assert plain.strip() == "Hello Alice,\nthe report is attached."
    assert "<p>Hello Alice" in mail.get_body(("html",)).get_content()
    [attachment] = list(mail.iter_attachments())
    assert attachment.get_filename() == "report.pdf" and attachment.get_content_type() == "application/pdf"
    assert attachment.get_content() == PDF_BYTES
    key_digest = hashlib.sha256(b"report-42:alice").hexdigest()[:32]
    assert mail["Message-ID"] == f"<{key_digest}.notification@example.com>" == job["result"]["provider_message_id"]
    row = outbox_row(handlers, "report-42:alice")
    assert (row["status"], row["attempts"], row["channel"], row["recipient"]) == (
        "sent",
        1,
        "email",
        "alice@example.com",
    )
    assert row["sent_at"] is not None and row["job_id"] == job["id"]

    again = handlers.run("notifications.send", data)  # the same key: a new job, nothing sent

    assert again["status"] == "completed", again["error"]
    assert again["result"]["status"] == "already sent" and again["result"]["sent_by_job"] == job["id"]
    assert len(inbox.envelopes) == 1


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")  # loopback, on purpose
def test_smtp_auth_with_the_right_password_delivers_and_a_wrong_one_fails_for_good(
    handlers, smtp_servers, smtp_env, monkeypatch
):
    inbox, port = smtp_servers.start(credentials=(b"mailer", b"right-pass"))
    smtp_env(port, SMTP_USERNAME="mailer", SMTP_PASSWORD="right-pass")
    handlers.start("notifications", name="right")
    data = {"channel": "email", "to": "bob@example.com", "subject": "Hi", "text": "authenticated"}

    job = handlers.run("notifications.send", data)

    assert job["status"] == "completed", job["error"]
    assert [m["Subject"] for m in inbox.messages()] == ["Hi"]

    handlers.workers.stop("right")
    monkeypatch.setenv("SMTP_PASSWORD", "wrong-pass")
    handlers.start("notifications", name="wrong")

    job = handlers.run("notifications.send", data, QUICK_RETRY)

    assert (job["status"], job["attempt"]) == ("failed", 1), job["error"]  # permanent: no retry
    assert "PermanentFailure: SMTP 535 authentication failed" in job["error"]
    assert "wrong-pass" not in job["error"]
    assert outbox_row(handlers, job["id"])["status"] == "failed"
    assert len(inbox.envelopes) == 1


def test_recipient_refused_with_550_fails_at_once_naming_the_code(handlers, smtp_servers, smtp_env):
    inbox, port = smtp_servers.start()
    inbox.refuse["ghost@example.com"] = "550 5.1.1 <ghost@example.com>: no such user"
    smtp_env(port)
    handlers.start("notifications")

    job = handlers.run("notifications.send", {"channel": "email", "to": "ghost@example.com", "text": "x"}, QUICK_RETRY)

    assert (job["status"], job["attempt"]) == ("failed", 1), job["error"]
    assert "SMTP 550 recipient refused: 5.1.1 <ghost@example.com>: no such user" in job["error"]
    assert job["progress"]["failed"] == 1
    row = outbox_row(handlers, job["id"])
    assert row["status"] == "failed" and "550" in row["error"]
    assert inbox.envelopes == []


def test_smtp_server_down_is_retried_and_delivers_once_it_is_up(handlers, smtp_servers, smtp_env):
    port = free_port()  # nothing listens here yet
    smtp_env(port)
    handlers.start("notifications")

    # the retry waits far longer than any slow machine needs to see it waiting; the test lets it run once the
    # server is up (run_now: what the admin API's execute does)
    options = {"attempts": 3, "backoff": {"type": "fixed", "delay": 600}}
    job_id = handlers.enqueue(
        "notifications.send", {"channel": "email", "to": "carol@example.com", "text": "hi"}, options
    )
    delayed = handlers.wait(job_id, "scheduled", timeout=60)
    # attempt 1 made, 2 and 3 to come; the failure is the previous attempt's, not the job's
    assert (delayed["attempts_made"], delayed["attempts_left"], delayed["error"]) == (1, 2, None)
    assert delayed["last_error"].startswith("Traceback") and "ServiceUnavailableError" in delayed["last_error"]
    assert outbox_row(handlers, job_id)["error"].startswith("ServiceUnavailableError: SMTP server 127.0.0.1")
    inbox, _ = smtp_servers.start(port=port)
    assert run_now(handlers.redis, job_id) == "promoted"

    job = handlers.wait(job_id)

    assert job["status"] == "completed", job["error"]
    assert job["attempt"] == 2 and job["result"]["attempts"] == 2
    assert (job["attempts_made"], job["attempts_left"], job["error"], job["last_error"]) == (2, 0, None, None)
    assert len(inbox.envelopes) == 1


# -- webhooks ----------------------------------------------------------------------------------------------------


def test_webhook_is_signed_and_a_receiver_with_another_secret_refuses_it(handlers, http_service, monkeypatch):
    monkeypatch.setenv("WEBHOOK_SIGNING_SECRET", SECRET)
    good, strict = Receiver(SECRET), Receiver("another-secret-0123456789")
    http_service.route("POST", "/hook", good)
    http_service.route("POST", "/strict", strict)
    handlers.start("notifications")
    payload = {"event": "report.ready", "reportId": 42, "title": "Relatório semanal"}

    job = handlers.run(
        "notifications.send", {"channel": "webhook", "to": http_service.url + "/hook", "payload": payload}
    )

    assert job["status"] == "completed", job["error"]
    assert good.answers == [200]
    [request] = http_service.received("POST", "/hook")
    assert request.json() == payload and request.headers["content-type"] == "application/json"
    assert request.headers["idempotency-key"] == job["id"]
    assert job["result"]["provider_message_id"] == "req-1"

    refused = handlers.run(
        "notifications.send", {"channel": "webhook", "to": http_service.url + "/strict", "text": "x"}
    )

    assert (refused["status"], refused["attempt"]) == ("failed", 1), refused["error"]
    assert "HTTP 401" in refused["error"] and strict.answers == [401]


def test_webhook_answering_503_is_retried_and_delivered_exactly_once(handlers, http_service, monkeypatch):
    monkeypatch.setenv("WEBHOOK_SIGNING_SECRET", SECRET)
    receiver = Receiver(SECRET, fail_first=1)
    http_service.route("POST", "/hook", receiver)
    handlers.start("notifications")
    data = {"channel": "webhook", "to": http_service.url + "/hook", "subject": "Done", "text": "all good"}

    job = handlers.run("notifications.send", {**data, "idempotencyKey": "evt-7"}, QUICK_RETRY)

    assert job["status"] == "completed", job["error"]
    assert job["attempt"] == 2 and receiver.answers == [503, 200]
    requests = http_service.received("POST", "/hook")
    assert [r.headers["idempotency-key"] for r in requests] == ["evt-7", "evt-7"]
    assert requests[1].json() == {"subject": "Done", "text": "all good"}
    row = outbox_row(handlers, "evt-7")
    assert (row["status"], row["attempts"], row["error"]) == ("sent", 2, None)

    # the crash window: an attempt that died between the send and "sent" left its row "sending"
    with handlers.db() as conn:
        conn.execute(
            "INSERT INTO notification_outbox (idempotency_key, channel, recipient, job_id, status, attempts)"
            " VALUES ('evt-8', 'webhook', %s, 'lost-job', 'sending', 1)",
            (data["to"],),
        )

    resent = handlers.run("notifications.send", {**data, "idempotencyKey": "evt-8"})

    assert resent["status"] == "completed", resent["error"]
    assert resent["result"]["previous_outcome_unknown"] is True and resent["result"]["attempts"] == 2
    assert http_service.received("POST", "/hook")[-1].headers["idempotency-key"] == "evt-8"  # the receiver can dedup


def test_a_key_reused_for_another_message_fails_for_good_naming_the_key(handlers, http_service, monkeypatch):
    monkeypatch.setenv("WEBHOOK_SIGNING_SECRET", SECRET)
    first, second = Receiver(SECRET), Receiver(SECRET)
    http_service.route("POST", "/first", first)
    http_service.route("POST", "/second", second)
    handlers.start("notifications")
    data = {"channel": "webhook", "to": http_service.url + "/first", "text": "invoice 1", "idempotencyKey": "inv-1"}

    sent = handlers.run("notifications.send", data)
    repeated = handlers.run("notifications.send", data)
    other_recipient = handlers.run("notifications.send", {**data, "to": http_service.url + "/second"}, QUICK_RETRY)
    other_text = handlers.run("notifications.send", {**data, "text": "invoice 2"}, QUICK_RETRY)

    assert (sent["status"], sent["result"]["status"]) == ("completed", "sent"), sent["error"]
    assert (repeated["status"], repeated["result"]["status"]) == ("completed", "already sent")
    for conflict in (other_recipient, other_text):
        assert (conflict["status"], conflict["attempt"]) == ("failed", 1), conflict["result"]
        assert conflict["result"] is None and "'inv-1'" in conflict["error"]
        assert "KeyConflict" in conflict["error"] and "another message" in conflict["error"]
    assert first.answers == [200] and second.answers == []
    row = outbox_row(handlers, "inv-1")
    assert (row["status"], row["job_id"], row["recipient"]) == ("sent", sent["id"], data["to"])


def test_the_same_key_enqueued_twice_is_sent_once_even_by_two_workers_at_once(handlers, http_service, monkeypatch):
    monkeypatch.setenv("WEBHOOK_SIGNING_SECRET", SECRET)
    hold = threading.Event()
    receiver = Receiver(SECRET, hold=hold)  # the first send hangs until both jobs run, one on each worker
    http_service.route("POST", "/hook", receiver)
    handlers.start("notifications", name="n1")
    handlers.start("notifications", name="n2")
    data = {"channel": "webhook", "to": http_service.url + "/hook", "text": "once", "idempotencyKey": "order-1"}

    ids = [handlers.enqueue("notifications.send", data) for _ in range(2)]
    try:
        for job_id in ids:
            handlers.wait(job_id, "started", timeout=60)
        wait_for(lambda: http_service.received("POST", "/hook"), timeout=60, message="the first send to arrive")
    finally:
        hold.set()
    jobs = [handlers.wait(job_id, timeout=60) for job_id in ids]

    assert [j["status"] for j in jobs] == ["completed", "completed"], [j["error"] for j in jobs]
    assert len({j["worker"] for j in jobs}) == 2  # both ran at once, one waited on the key's lock
    assert sorted(j["result"]["status"] for j in jobs) == ["already sent", "sent"]
    assert receiver.answers == [200]


# -- WhatsApp and configuration ----------------------------------------------------------------------------------


def test_whatsapp_goes_through_the_provider_and_an_unconfigured_channel_fails_naming_it(
    handlers, http_service, monkeypatch
):
    http_service.route("POST", "/v1/messages", (201, {}, {"messages": [{"id": "wamid.HBgM123"}]}))
    monkeypatch.setenv("WHATSAPP_API_URL", http_service.url + "/v1/messages")
    monkeypatch.setenv("WHATSAPP_API_TOKEN", "wa-token-xyz")
    monkeypatch.setenv("WHATSAPP_FROM", "+5511999990000")
    for name in ("SMTP_HOST", "SMTP_FROM", "WEBHOOK_SIGNING_SECRET"):
        monkeypatch.delenv(name, raising=False)
    handlers.start("notifications")

    job = handlers.run(
        "notifications.send", {"channel": "whatsapp", "to": "+5511988887777", "subject": "Alert", "text": "Disk full"}
    )

    assert job["status"] == "completed", job["error"]
    assert job["result"]["provider_message_id"] == "wamid.HBgM123"
    [request] = http_service.received("POST", "/v1/messages")
    assert request.headers["authorization"] == "Bearer wa-token-xyz"
    assert request.headers["idempotency-key"] == job["id"]
    assert request.json() == {
        "from": "+5511999990000",
        "to": "+5511988887777",
        "text": "Alert\n\nDisk full",
        "idempotencyKey": job["id"],
    }
    assert outbox_row(handlers, job["id"])["provider_message_id"] == "wamid.HBgM123"

    unconfigured = handlers.run("notifications.send", {"channel": "email", "to": "d@example.com", "text": "x"})

    assert (unconfigured["status"], unconfigured["attempt"]) == ("failed", 1), unconfigured["error"]
    assert "e-mail is not configured: set SMTP_HOST" in unconfigured["error"]
    assert outbox_row(handlers, unconfigured["id"]) is None


# -- pure functions (no worker) ----------------------------------------------------------------------------------


def bind(**data):
    return get_task("notifications.send").bind(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"channel": "sms", "to": "+5511988887777", "text": "x"}, "channel must be one of email, webhook, whatsapp"),
        ({"channel": "email", "to": "not-an-address", "text": "x"}, "'to' must be an e-mail address"),
        ({"channel": "email", "to": "a@localhost", "text": "x"}, "'to' must be an e-mail address"),
        ({"channel": "webhook", "to": "ftp://example.com/x", "text": "x"}, "http:// or https:// URL"),
        ({"channel": "webhook", "to": "https:///path", "text": "x"}, "http:// or https:// URL"),
        ({"channel": "webhook", "to": "http://h:99999/", "text": "x"}, "http:// or https:// URL"),
        ({"channel": "whatsapp", "to": "5511988887777", "text": "x"}, "E.164 phone number"),
        ({"channel": "whatsapp", "to": "+1234567", "text": "x"}, "E.164 phone number"),
        ({"channel": "email", "to": "a@example.com"}, "an e-mail needs a subject, a text or an html body"),
        ({"channel": "email", "to": "a@example.com", "subject": "a\r\nBcc: x@evil.test"}, "single line"),
        ({"channel": "email", "to": "a@example.com", "text": 5}, "'text' must be a string"),
        ({"channel": "webhook", "to": "https://h.example/x"}, "a webhook needs a payload, a subject or a text"),
        ({"channel": "webhook", "to": "https://h.example/x", "payload": [1]}, "'payload' must be a JSON object"),
        ({"channel": "email", "to": "a@example.com", "text": "x", "payload": {}}, "'payload' is the body of a webhook"),
        ({"channel": "whatsapp", "to": "+5511988887777", "html": "<b>x</b>"}, "plain text"),
        ({"channel": "whatsapp", "to": "+5511988887777", "text": "x" * MAX_WHATSAPP_TEXT + "x"}, "at most 4096"),
        ({"channel": "email", "to": "a@example.com", "text": "x", "idempotencyKey": "has space"}, "idempotencyKey"),
        ({"channel": "email", "to": "a@example.com", "text": "x", "attachments": {}}, "must be a list"),
        (
            {"channel": "email", "to": "a@example.com", "text": "x", "attachments": [{"filename": "a.txt"}]},
            "attachment 1 must have exactly the keys filename, contentType, contentBase64",
        ),
    ],
)
def test_bad_data_is_refused_at_enqueue_with_a_clear_message(data, message):
    with pytest.raises(InvalidJobError, match="^notifications.send: ") as info:
        bind(**data)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("attachment", "message"),
    [
        ({"filename": "a.pdf", "contentType": "application/pdf", "contentBase64": "not base64!"}, "not valid base64"),
        ({"filename": "../etc/passwd", "contentType": "text/plain", "contentBase64": "eA=="}, "plain file name"),
        ({"filename": "a.pdf", "contentType": "pdf", "contentBase64": "eA=="}, "type/subtype"),
    ],
)
def test_bad_attachments_are_refused_at_enqueue(attachment, message):
    with pytest.raises(InvalidJobError, match=message):
        bind(channel="email", to="a@example.com", text="x", attachments=[attachment])
    with pytest.raises(InvalidJobError, match="attachments are sent by e-mail only"):
        bind(channel="webhook", to="https://h.example/x", text="x", attachments=[attachment])


def test_good_data_binds_to_the_handler_arguments():
    kwargs = bind(channel="whatsapp", to="+5511988887777", text="hi", idempotencyKey="k-1")
    assert kwargs == {"channel": "whatsapp", "to": "+5511988887777", "text": "hi", "idempotency_key": "k-1"}
    bind(channel="webhook", to="https://hooks.example.com:8443/in?x=1", payload={"a": 1}, attachments=[])


def test_webhook_signature_covers_the_timestamp_and_the_exact_body():
    settings = _notify_http.WebhookSettings(SECRET.encode())
    body, headers = _notify_http.webhook_request(settings, "k-1", {"b": 2, "a": "é"}, now=1_700_000_000)
    assert body == '{"b":2,"a":"é"}'.encode()
    assert headers["X-Bullrq-Timestamp"] == "1700000000" and headers["Idempotency-Key"] == "k-1"
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert headers["X-Bullrq-Signature"] == f"sha256={expected}"
    assert _notify_http.signature(SECRET.encode(), "1700000001", body) != headers["X-Bullrq-Signature"]


def test_channel_settings_name_the_missing_or_bad_variable():
    with pytest.raises(ConfigError, match="set SMTP_HOST"):
        _notify_email.SmtpSettings.from_env({})
    with pytest.raises(ConfigError, match="SMTP_FROM"):
        _notify_email.SmtpSettings.from_env({"SMTP_HOST": "mail.example.com"})
    base = {"SMTP_HOST": "mail.example.com", "SMTP_FROM": SENDER}
    with pytest.raises(ConfigError, match="SMTP_SECURITY='ssl'"):
        _notify_email.SmtpSettings.from_env({**base, "SMTP_SECURITY": "ssl"})
    with pytest.raises(ConfigError, match="SMTP_PORT"):
        _notify_email.SmtpSettings.from_env({**base, "SMTP_PORT": "70000"})
    with pytest.raises(ConfigError, match="SMTP_PASSWORD must be set too"):
        _notify_email.SmtpSettings.from_env({**base, "SMTP_USERNAME": "u"})
    smtp = _notify_email.SmtpSettings.from_env(base)
    assert (smtp.port, smtp.security, smtp.envelope_sender, smtp.username) == (
        587,
        "starttls",
        "reports@example.com",
        None,
    )
    assert _notify_email.SmtpSettings.from_env({**base, "SMTP_SECURITY": "tls"}).port == 465
    assert "p4ss" not in repr(
        _notify_email.SmtpSettings.from_env({**base, "SMTP_USERNAME": "u", "SMTP_PASSWORD": "p4ss"})
    )
    with pytest.raises(ConfigError, match="set WEBHOOK_SIGNING_SECRET"):
        _notify_http.WebhookSettings.from_env({})
    with pytest.raises(ConfigError, match="WEBHOOK_SIGNING_SECRET is too short"):
        _notify_http.WebhookSettings.from_env({"WEBHOOK_SIGNING_SECRET": "short"})
    with pytest.raises(ConfigError, match="set WHATSAPP_API_TOKEN"):
        _notify_http.WhatsAppSettings.from_env({"WHATSAPP_API_URL": "https://wa.example/v1"})
    with pytest.raises(ConfigError, match="WHATSAPP_API_URL"):
        _notify_http.WhatsAppSettings.from_env({"WHATSAPP_API_URL": "wa.example/v1", "WHATSAPP_API_TOKEN": "t"})


def test_the_message_id_depends_only_on_the_idempotency_key():
    smtp = _notify_email.SmtpSettings("mail.example.com", 587, "starttls", SENDER)
    one = Message("email", "a@example.com", "S", "T", None, [], None, "key-1")
    mails = [_notify_email.build_message(smtp, m) for m in (one, one, dataclasses.replace(one, key="key-2"))]
    assert mails[0]["Message-ID"] == mails[1]["Message-ID"] != mails[2]["Message-ID"]
    assert mails[0]["Message-ID"].endswith(".notification@example.com>")
    html_only = _notify_email.build_message(
        smtp, Message("email", "a@example.com", None, None, "<b>x</b>", [], None, "k")
    )
    assert html_only.get_content_type() == "text/html" and html_only["Subject"] is None


@pytest.mark.parametrize(
    ("code", "permanent"),
    [(550, True), (552, True), (450, False), (421, False)],
)
def test_smtp_replies_5xx_are_permanent_and_4xx_transient(code, permanent):
    smtp = _notify_email.SmtpSettings("mail.example.com", 587, "starttls", SENDER)
    refused = _notify_email.classify(smtplib.SMTPRecipientsRefused({"a@example.com": (code, b"nope")}), smtp)
    assert isinstance(refused, PermanentFailure if permanent else ServiceUnavailableError)
    assert str(refused).startswith(f"SMTP {code} recipient refused: nope")
    assert isinstance(_notify_email.classify(ConnectionRefusedError(111, "refused"), smtp), ServiceUnavailableError)


def test_the_provider_message_id_is_found_in_common_answer_shapes():
    shapes = [{"id": "a"}, {"messageId": "a"}, {"sid": "a"}, {"messages": [{"id": "a"}]}]
    assert [_notify_http.provider_message_id(httpx.Response(200, json=s)) for s in shapes] == ["a"] * 4
    assert _notify_http.provider_message_id(httpx.Response(200, text="accepted")) is None
    assert _notify_http.provider_message_id(httpx.Response(200, json={"id": 17})) == "17"
