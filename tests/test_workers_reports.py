"""The reports queue (workers/reports.py) through a real worker: figures from seeded history and sync rows, HTML /
CSV / PDF, notifications enqueued once per report and recipient, next run in the schedule's zone, the weekly run
of due schedules in batches, the default report, and permanent failures; plus unit tests of the pure parts."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from jinja2 import UndefinedError
from psycopg.types.json import Jsonb

from app.config import ConfigError
from app.errors import InvalidJobError
from app.recipients import Recipient, dedup_id
from app.runtime import control
from app.runtime.enqueue import JobOptions, enqueue
from app.runtime.jobs import describe_job, fetch_job
from app.store import rollup
from app.tasks import get_task, queue_keys
from queues import job_key
from workers import _report_data, _report_render
from workers._report_delivery import Rendered, notification
from workers.reports import ReportSettings, check_formats, slot_key

pytest_plugins = ["tests.worker_processes", "tests.handler_runs", "tests.http_service"]

SCRIPT_TASK = "<script>alert(1)</script>"
SAO_PAULO = ZoneInfo("America/Sao_Paulo")  # UTC-3 all year (no DST since 2019)
FAST_RETRY = {"attempts": 3, "backoff": {"type": "fixed", "delay": 1}}


# --- seeding -----------------------------------------------------------------------------------------------------

def _run(conn, job_id, queue, task, status, started, ms, error_type=None, message=None):
    conn.execute(
        "INSERT INTO job_runs (job_id, queue, task, status, started_at, ended_at, duration_ms, error_type, "
        "error_message) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        [job_id, queue, task, status, started, started + timedelta(milliseconds=ms), ms, error_type, message],
    )


def seed_history(conn, now: datetime) -> None:
    """sync 9 finished runs (3 failed), harvest 5 (1 retried), documents 2 (1 failed, an HTML task name); more
    outside the 7-day period; a run still going (not counted)."""
    inside, outside = now - timedelta(days=2), now - timedelta(days=10)
    for n, ms in enumerate((100, 200, 300, 400, 500, 600)):
        _run(conn, f"s{n}", "sync", "sync.workspace", "completed", inside + timedelta(minutes=n), ms)
    _run(conn, "s-f1", "sync", "sync.workspace", "failed", inside, 50, "ProviderError", "primary down")
    _run(conn, "s-f2", "sync", "sync.workspace", "failed", inside + timedelta(hours=1), 50, "ProviderError",
         "primary down again")
    _run(conn, "s-t", "sync", "sync.scheduled", "timed_out", inside, 300_000, "JobTimeoutError", "ran past 300 s")
    _run(conn, "s-run", "sync", "sync.workspace", "started", now - timedelta(minutes=1), 0)
    for n in range(4):
        _run(conn, f"h{n}", "harvest", "harvest.run", "completed", inside, 1000)
    _run(conn, "h-r", "harvest", "harvest.run", "retried", inside, 20, "ServiceUnavailableError", "feed 503")
    _run(conn, "d1", "documents", "documents.process", "completed", inside, 2000)
    _run(conn, "d-f", "documents", SCRIPT_TASK, "failed", inside, 10, "PdfError", "<b>corrupt</b> PDF")
    for n in range(5):
        _run(conn, f"old-s{n}", "sync", "sync.workspace", "failed", outside, 10, "ProviderError", "old")
    for n in range(3):
        _run(conn, f"old-e{n}", "embeddings", "embeddings.generate", "completed", outside, 10)
    rollup.rebuild(conn)  # the history writer keeps the rollup; rows loaded by SQL need it rebuilt


def seed_sync(conn, now: datetime) -> None:
    """ws-a: 3 items (1 new, 2 changed in the period, 1 with an error) and 1 added in the period but never fetched
    (no data: not new data), 2 sync runs in the period and 1 before it; ws-b: 1 old unchanged item."""
    recent, old = now - timedelta(days=1), now - timedelta(days=30)
    items = [("ws-a", "1", recent, recent, None), ("ws-a", "2", old, recent, None), ("ws-a", "3", old, old, "404"),
             ("ws-b", "9", old, old, None)]
    for workspace, external, created, changed, error in items:
        conn.execute(
            "INSERT INTO sync_items (workspace_id, external_id, data, created_at, changed_at, synced_at, last_error)"
            " VALUES (%s, %s, '{}', %s, %s, %s, %s)", [workspace, external, created, changed, changed, error],
        )  # fmt: skip
    conn.execute("INSERT INTO sync_items (workspace_id, external_id, created_at, last_error) "
                 "VALUES ('ws-a', '4', %s, 'provider timeout')", [recent])
    runs = [("r1", recent, 1, 1, 1, 0), ("r2", recent, 0, 1, 2, 1), ("r-old", now - timedelta(days=10), 50, 0, 0, 0)]
    for job_id, ended, new, updated, unchanged, failed in runs:
        conn.execute(
            "INSERT INTO sync_runs (job_id, workspace_id, started_at, ended_at, new_count, updated_count, "
            "unchanged_count, failed_count) VALUES (%s, 'ws-a', %s, %s, %s, %s, %s, %s)",
            [job_id, ended - timedelta(seconds=5), ended, new, updated, unchanged, failed],
        )


def add_schedule(conn, schedule_id, *, cron="0 23 * * 0", timezone="UTC", recipients=(), formats=("html",),
                 enabled=True, next_run_at=None, name=None):
    conn.execute(
        "INSERT INTO report_schedules (id, name, cron, timezone, recipients, formats, enabled, next_run_at) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        [schedule_id, name or schedule_id, cron, timezone, Jsonb(list(recipients)), list(formats), enabled,
         next_run_at],
    )


def waiting_notifications(redis) -> int:
    return sum(redis.llen(lane) for lane in queue_keys("notifications").lanes)


def job_data(redis, job_id: str) -> dict:
    return describe_job(fetch_job(job_id, redis))["data"]


#: what Python prints for objects that are not figures: a method, a dict view, an object's default repr, None
PYTHON_OBJECTS = re.compile(r"built-in method|bound method|object at 0x|dict_items|dict_values|<function |\bNone\b")


def assert_no_python_objects(text: str) -> None:
    found = PYTHON_OBJECTS.search(text)
    assert found is None, text[max(0, found.start() - 200): found.end() + 100]


# --- through a real worker ---------------------------------------------------------------------------------------

def test_generate_builds_the_report_stores_it_and_enqueues_one_notification_per_recipient(handlers):
    now = datetime.now(UTC)
    email = {"channel": "email", "to": "boss@example.com"}
    webhook = {"channel": "webhook", "to": "http://127.0.0.1:9/hooks/report?token=abc"}
    with handlers.db() as conn:
        seed_history(conn, now)
        seed_sync(conn, now)
        add_schedule(conn, "exec", name="Weekly <exec> report", timezone="America/Sao_Paulo",
                     recipients=[email, webhook], formats=["pdf", "csv", "html"])
    handlers.start("reports")  # no notifications worker: the messages stay waiting, to be read here
    job = handlers.run("reports.generate", {"scheduleId": "exec"})
    assert job["status"] == "completed", job["error"]
    result = job["result"]
    assert job["progress"]["percent"] == 100 and job["progress"]["processed"] == 2

    with handlers.db() as conn:
        report = conn.execute("SELECT * FROM reports WHERE job_id = %s", [job["id"]]).fetchone()
        schedule = conn.execute("SELECT * FROM report_schedules WHERE id = 'exec'").fetchone()
    assert report["id"] == result["report_id"] and report["schedule_id"] == "exec"
    assert report["period_end"] - report["period_start"] >= timedelta(days=7)
    assert report["period_start"].minute == 0 and report["period_start"] > now - timedelta(days=7, hours=1)

    figures = report["summary"]["jobs"]
    queues = {q["queue"]: q for q in figures["queues"]}
    assert [q for q in queues if q in ("sync", "harvest", "documents")] == ["sync", "harvest", "documents"]
    assert "embeddings" not in queues  # its runs are all before the period
    assert (queues["sync"]["runs"], queues["sync"]["completed"], queues["sync"]["failed"]) == (9, 6, 3)
    assert queues["sync"]["failure_rate"] == pytest.approx(0.3333)
    assert queues["sync"]["mean_ms"] == pytest.approx(350)
    assert 300 / 1.1 <= queues["sync"]["p50_ms"] <= 400 * 1.1 <= queues["sync"]["p95_ms"] * 1.2
    assert (queues["harvest"]["runs"], queues["harvest"]["failed"]) == (5, 0)  # retried: a run, not a failure
    assert (queues["documents"]["runs"], queues["documents"]["failed"]) == (2, 1)
    assert figures["failing_tasks"][0] == {"queue": "sync", "task": "sync.workspace", "runs": 8, "failed": 2,
                                           "failure_rate": 0.25}
    assert {"task": SCRIPT_TASK, "error_type": "PdfError", "count": 1}.items() <= {
        e["task"]: e for e in figures["errors"]}[SCRIPT_TASK].items()

    sync = report["summary"]["sync"]
    assert {k: sync[k] for k in ("workspaces_total", "items", "new", "changed", "with_errors", "runs",
                                 "updated_count", "unchanged_count", "failed_count")} == {
        "workspaces_total": 2, "items": 5, "new": 1, "changed": 2, "with_errors": 2, "runs": 2,
        "updated_count": 2, "unchanged_count": 3, "failed_count": 1}
    assert "new_count" not in sync  # one "new" figure: a second one counted the same items another way
    assert [w["workspace_id"] for w in sync["workspaces"]] == ["ws-a", "ws-b"]

    # HTML: untrusted text is escaped, nothing is loaded from outside
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in report["html"] and "<script>" not in report["html"]
    assert "Weekly &lt;exec&gt; report" in report["html"] and "&lt;b&gt;corrupt&lt;/b&gt; PDF" in report["html"]
    assert "http" not in report["html"].split("<body>")[0] and "src=" not in report["html"]
    # what the recipient reads: figures, never Python objects
    assert_no_python_objects(report["html"])
    cards = dict((label, value) for value, label in re.findall(
        r'<div class="value[^"]*">([^<]*)</div><div class="label">([^<]*)</div>', report["html"]))
    assert (cards["items in 2 workspaces"], cards["new"], cards["changed"]) == ("5", "1", "2")
    [ws_a] = re.findall(r"<tr><td>ws-a</td>(.*?)</tr>", report["html"])
    assert re.findall(r'<td class="n[^"]*">([^<]*)</td>', ws_a)[:3] == ["4", "1", "2"]  # items, new, changed
    # CSV: one figure per row
    rows = list(csv.reader(io.StringIO(report["csv"])))
    assert rows[0] == ["section", "key", "metric", "value"]
    cells = {(r[0], r[1], r[2]): r[3] for r in rows[1:]}
    assert cells[("queue", "sync", "runs")] == "9" and cells[("queue", "sync", "failure_rate")] == "0.3333"
    assert cells[("failing_task", f"documents/{SCRIPT_TASK}", "failed")] == "1"
    assert cells[("sync", "all", "changed")] == "2" and cells[("workspace", "ws-a", "items")] == "4"
    assert cells[("sync", "all", "new")] == "1" and ("sync", "all", "new_count") not in cells
    # PDF: a real PDF holding the figures
    pdf = bytes(report["pdf"])
    assert pdf.startswith(b"%PDF")
    import pypdf

    pdf_text = "".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(pdf)).pages)
    assert "Weekly <exec> report" in pdf_text and "sync.workspace" in pdf_text and "ws-a" in pdf_text
    assert_no_python_objects(pdf_text)
    assert "5 items in 2 workspaces, 1 new, 2 changed" in " ".join(pdf_text.split())

    # next run: Sunday 23:00 in Sao Paulo (02:00 UTC Monday), within a week of this run
    assert now <= schedule["last_run_at"] <= datetime.now(UTC)
    local = schedule["next_run_at"].astimezone(SAO_PAULO)
    assert (local.weekday(), local.hour, local.minute) == (6, 23, 0)
    assert schedule["next_run_at"].astimezone(UTC).hour == 2
    assert timedelta(0) < schedule["next_run_at"] - schedule["last_run_at"] <= timedelta(days=7)
    assert result["next_run_at"] == schedule["next_run_at"].isoformat()

    # the notifications: one per recipient, keyed by report and recipient
    sent = {n["channel"]: n for n in result["notifications"]}
    assert set(sent) == {"email", "webhook"} and all(n["created"] for n in sent.values())
    assert waiting_notifications(handlers.redis) == 2
    mail = job_data(handlers.redis, sent["email"]["job_id"])
    assert mail["to"] == "boss@example.com" and mail["subject"].startswith("Weekly <exec> report: ")
    assert mail["idempotency_key"] == f"report:{report['id']}:email:boss@example.com"
    assert mail["html"] == report["html"] and "sync: 9 runs, 3 failed" in mail["text"]
    assert "5 items in 2 workspaces, 1 new, 2 changed" in mail["text"]
    assert_no_python_objects(mail["text"])
    files = {a["filename"]: a for a in mail["attachments"]}
    assert set(files) == {f"report-{report['id']}.csv", f"report-{report['id']}.pdf"}
    assert base64.b64decode(files[f"report-{report['id']}.pdf"]["contentBase64"]) == pdf
    hook = job_data(handlers.redis, sent["webhook"]["job_id"])
    assert hook["to"] == webhook["to"] and "attachments" not in hook and "html" not in hook
    assert hook["idempotency_key"].startswith(f"report:{report['id']}:webhook:")  # a digest: the URL holds ? and =
    assert hook["payload"]["report_id"] == report["id"] and hook["payload"]["summary"]["sync"]["items"] == 5
    # the webhook recipient gets the report itself, not only its figures
    content = hook["payload"]["content"]
    assert content["html"] == report["html"] and content["text"] == mail["text"]
    hook_files = {a["filename"]: base64.b64decode(a["contentBase64"]) for a in content["attachments"]}
    assert hook_files == {f"report-{report['id']}.csv": report["csv"].encode(), f"report-{report['id']}.pdf": pdf}

    # the same job run again (a retry, a worker lost mid-run): same report row, no second notification
    handlers.redis.delete(job_key(job["id"]))  # run again under the same id (enqueue never writes over a job)
    enqueue(handlers.redis, "reports.generate", {"scheduleId": "exec"}, job_id=job["id"])
    again = handlers.wait(job["id"])
    assert again["status"] == "completed", again["error"]
    assert again["result"]["report_id"] == report["id"]
    assert {n["job_id"] for n in again["result"]["notifications"]} == {n["job_id"] for n in sent.values()}
    assert not any(n["created"] for n in again["result"]["notifications"])
    assert waiting_notifications(handlers.redis) == 2

    # a second job for the same schedule is a second report, with its own notifications
    second = handlers.run("reports.generate", {"scheduleId": "exec", "periodDays": 1})
    assert second["status"] == "completed", second["error"]
    assert second["result"]["report_id"] != report["id"]
    assert waiting_notifications(handlers.redis) == 4
    keys = {job_data(handlers.redis, n["job_id"])["idempotency_key"]
            for n in result["notifications"] + second["result"]["notifications"]}
    assert len(keys) == 4
    with handlers.db() as conn:
        assert conn.execute("SELECT count(*) AS n FROM reports").fetchone()["n"] == 2


def test_generate_fails_permanently_naming_a_schedule_it_cannot_run(handlers):
    with handlers.db() as conn:
        add_schedule(conn, "off", enabled=False)
        add_schedule(conn, "bad-cron", cron="61 * * * *")
        add_schedule(conn, "bad-zone", timezone="Mars/Olympus")
        add_schedule(conn, "bad-recipient", recipients=[{"channel": "fax", "to": "123"}])
        add_schedule(conn, "bad-format", formats=["docx"])
        add_schedule(conn, "never", cron="0 0 31 2 *")  # valid fields, no such day
    handlers.start("reports")
    expected = {"nope": "does not exist", "off": "is disabled", "bad-cron": "61 * * * *", "bad-zone": "Mars/Olympus",
                "bad-recipient": "recipient 1: channel", "bad-format": "docx", "never": "never fires"}
    ids = {name: handlers.enqueue("reports.generate", {"scheduleId": name}, FAST_RETRY) for name in expected}
    for name, text in expected.items():
        job = handlers.wait(ids[name])
        assert job["status"] == "failed" and job["attempt"] == 1, (name, job)
        assert f"report schedule '{name}'" in job["error"] and text in job["error"], job["error"]
    with handlers.db() as conn:
        assert conn.execute("SELECT count(*) AS n FROM reports").fetchone()["n"] == 0


def test_bad_job_data_is_refused_at_enqueue(handlers):
    for data in ({}, {"scheduleId": ""}, {"scheduleId": 5}, {"scheduleId": "x" * 201},
                 {"scheduleId": "x", "periodDays": 0}, {"scheduleId": "x", "periodDays": "7"},
                 {"scheduleId": "x", "periodDays": True}, {"scheduleId": "x", "periodDays": 400}):
        with pytest.raises(InvalidJobError):
            handlers.enqueue("reports.generate", data)
    with pytest.raises(InvalidJobError):
        handlers.enqueue("reports.weekly", {"scheduleId": "x"})


def test_weekly_enqueues_the_due_schedules_only_in_batches_once_per_slot(handlers):
    now = datetime.now(UTC)
    with handlers.db() as conn:
        for n in range(12):  # due: never run (NULL) or next run passed
            add_schedule(conn, f"due-{n:02d}", formats=["csv"], next_run_at=None if n % 2 else now - timedelta(hours=n))
        add_schedule(conn, "later", next_run_at=now + timedelta(days=1))
        add_schedule(conn, "off", enabled=False, next_run_at=now - timedelta(days=1))
        held = conn.execute("SELECT id, next_run_at FROM report_schedules WHERE id = 'due-04'").fetchone()
    # a job for due-04's current slot is already waiting (delayed): the weekly run must not add a second one
    pending = enqueue(handlers.redis, "reports.generate", {"scheduleId": "due-04"}, {"jobId": slot_key(held),
                                                                                    "delay": 600}).id
    handlers.start("reports")
    job = handlers.run("reports.weekly")
    assert job["status"] == "completed", job["error"]
    result = job["result"]
    assert (result["schedules_due"], result["enqueued"], result["already_pending"], result["batches"]) == (12, 11, 1, 2)
    assert {j["schedule_id"] for j in result["jobs"]} == {f"due-{n:02d}" for n in range(12)}
    assert [j["job_id"] for j in result["jobs"] if j["schedule_id"] == "due-04"] == [pending]
    assert job["progress"]["processed"] == 12 and job["progress"]["percent"] == 100

    control.run_now(handlers.redis, pending)  # the delayed one runs now
    for entry in result["jobs"]:
        assert handlers.wait(entry["job_id"])["status"] == "completed", entry
    with handlers.db() as conn:
        reports = conn.execute("SELECT schedule_id, count(*) AS n FROM reports GROUP BY 1 ORDER BY 1").fetchall()
        schedules = {r["id"]: r for r in conn.execute("SELECT * FROM report_schedules")}
    assert reports == [{"schedule_id": f"due-{n:02d}", "n": 1} for n in range(12)]
    assert all(schedules[f"due-{n:02d}"]["next_run_at"] > now for n in range(12))
    assert schedules["later"]["last_run_at"] is None and schedules["off"]["last_run_at"] is None

    again = handlers.run("reports.weekly")  # nothing is due any more
    assert again["status"] == "completed", again["error"]
    assert (again["result"]["schedules_due"], again["result"]["enqueued"], again["result"]["batches"]) == (0, 0, 0)


def test_weekly_without_schedules_delivers_the_default_report_to_the_env_recipients(handlers, monkeypatch):
    monkeypatch.setenv("REPORTS_DEFAULT_RECIPIENTS", "email:ops@example.com, webhook:http://127.0.0.1:9/hook")
    monkeypatch.setenv("REPORTS_DEFAULT_FORMATS", "pdf,html")
    with handlers.db() as conn:
        seed_history(conn, datetime.now(UTC))
    handlers.start("reports")
    job = handlers.run("reports.weekly")
    assert job["status"] == "completed", job["error"]
    result = job["result"]
    assert result["default_report"] and result["delivered"] and result["formats"] == ["html", "pdf"]
    with handlers.db() as conn:
        report = conn.execute("SELECT * FROM reports").fetchone()
    assert report["schedule_id"] is None and report["job_id"] == job["id"] and report["csv"] is None
    assert bytes(report["pdf"]).startswith(b"%PDF") and report["summary"]["jobs"]["runs"] == 16
    assert waiting_notifications(handlers.redis) == 2
    mail = job_data(handlers.redis, next(n["job_id"] for n in result["notifications"] if n["channel"] == "email"))
    assert mail["to"] == "ops@example.com" and [a["contentType"] for a in mail["attachments"]] == ["application/pdf"]


def test_weekly_without_schedules_or_recipients_stores_the_report_undelivered(handlers, monkeypatch):
    monkeypatch.delenv("REPORTS_DEFAULT_RECIPIENTS", raising=False)
    handlers.start("reports")
    job = handlers.run("reports.weekly")
    assert job["status"] == "completed", job["error"]
    assert job["result"]["delivered"] is False and "REPORTS_DEFAULT_RECIPIENTS" in job["result"]["note"]
    assert job["result"]["notifications"] == []
    with handlers.db() as conn:
        report = conn.execute("SELECT * FROM reports").fetchone()
    assert report["job_id"] == job["id"] and "No job ran in this period." in report["html"]
    assert report["summary"]["sync"]["items"] == 0
    assert waiting_notifications(handlers.redis) == 0


# --- pure functions ----------------------------------------------------------------------------------------------

def test_period_starts_on_the_hour_the_given_days_before_its_end():
    end = datetime(2024, 3, 10, 23, 0, 7, tzinfo=UTC)
    assert _report_data.period_bounds(end, 7) == (datetime(2024, 3, 3, 23, tzinfo=UTC), end)
    end = datetime(2024, 3, 10, 23, 45, tzinfo=ZoneInfo("Europe/Lisbon"))
    assert _report_data.period_bounds(end, 1)[0] == datetime(2024, 3, 9, 23, tzinfo=UTC)


def test_recipients_from_the_environment():
    settings = ReportSettings.from_env({
        "REPORTS_DEFAULT_RECIPIENTS": " email:a@example.com,webhook:https://h.example.com/x?t=1,,WhatsApp:+351 911 "
                                      "111 111,email:a@example.com",
        "REPORTS_DEFAULT_FORMATS": "pdf, CSV"})
    assert settings.default_recipients == (
        Recipient("email", "a@example.com"), Recipient("webhook", "https://h.example.com/x?t=1"),
        Recipient("whatsapp", "+351911111111"))
    assert settings.default_formats == ("csv", "pdf")
    assert ReportSettings.from_env({}) == ReportSettings((), ("html", "csv"))
    with pytest.raises(ConfigError, match="REPORTS_DEFAULT_RECIPIENTS: entry 2: webhook") as caught:
        ReportSettings.from_env({"REPORTS_DEFAULT_RECIPIENTS": "email:a@example.com,webhook:ftp://secret-token"})
    assert "secret-token" not in str(caught.value)
    for bad in ("fax:1", "ops@example.com", "email:not-an-address", "whatsapp:call-me", "whatsapp:911111111",
                "webhook:https://"):
        with pytest.raises(ConfigError, match="REPORTS_DEFAULT_RECIPIENTS"):
            ReportSettings.from_env({"REPORTS_DEFAULT_RECIPIENTS": bad})
    with pytest.raises(ConfigError, match="REPORTS_DEFAULT_FORMATS: unknown format 'docx'"):
        ReportSettings.from_env({"REPORTS_DEFAULT_FORMATS": "html,docx"})
    assert check_formats(["pdf", "html", "pdf"]) == ("html", "pdf")


def test_notification_keys_are_valid_dedup_ids_and_each_channel_gets_its_fields():
    report = Rendered(report_id=7, title="T", subject="S\nline two", text="body", payload={"a": 1}, html="<p>x</p>",
                      csv="a,b\r\n", pdf=b"%PDF-1.3 x")
    recipients = (Recipient("email", "a@example.com"), Recipient("webhook", "https://h.example.com/x?t=1&u=2"),
                  Recipient("webhook", "https://h.example.com/" + "x" * 300), Recipient("whatsapp", "+351911111111"))
    for recipient in recipients:
        data, options = notification(report, recipient)
        assert data["idempotencyKey"] == options["jobId"]
        assert options["jobId"].startswith(f"report:7:{recipient.channel}:")
        assert JobOptions.parse(options).dedup == options["jobId"]  # the enqueue rules accept it as a dedup id
        get_task("notifications.send").bind(data)  # and the notifications queue accepts the message
        assert data["subject"] == "S line two"
        assert ("html" in data, "attachments" in data, "payload" in data) == {
            "email": (True, True, False), "webhook": (False, False, True), "whatsapp": (False, False, False)
        }[recipient.channel]
    assert notification(report, recipients[0])[0]["idempotencyKey"] == "report:7:email:a@example.com"  # readable
    assert dedup_id("report:7:webhook:https://x/?a=1") != dedup_id("report:7:webhook:https://x/?a=2")
    data, _ = notification(report, recipients[0])
    assert [base64.b64decode(a["contentBase64"]) for a in data["attachments"]] == [b"a,b\r\n", b"%PDF-1.3 x"]
    json.dumps(data)  # job data must be JSON


def test_csv_cells_never_start_a_formula_and_pdf_text_fits_latin1():
    summary = {
        "period": {"start": "2024-03-03T23:00:00+00:00", "end": "2024-03-10T23:00:00+00:00", "days": 7},
        "jobs": {"runs": 1, "completed": 0, "failed": 1, "failure_rate": 1.0, "queues": [],
                 "failing_tasks": [], "errors": []},
        "sync": {"workspaces_total": 1, "items": 1, "changed": 0, "new": 0, "with_errors": 0, "runs": 0,
                 "updated_count": 0, "unchanged_count": 0, "failed_count": 0,
                 "workspaces": [{"workspace_id": "=HYPERLINK(\"http://x\")", "items": 1, "changed": 0, "new": 0,
                                 "with_errors": 0, "runs": 0, "updated_count": 0,
                                 "unchanged_count": 0, "failed_count": 0}]},
    }
    rows = list(csv.reader(io.StringIO(_report_render.csv_text("@title", summary))))
    assert all(not cell.startswith(("=", "+", "-", "@")) for row in rows for cell in row)
    assert ["workspace", "'=HYPERLINK(\"http://x\")", "items", "1"] in rows
    assert _report_render.latin1("Relatório – “ok” 日本\x00", 12) == 'Relatório...'
    assert _report_render.latin1("a – “b” 日") == 'a - "b" ?'
    assert _report_render.pdf("Relatório – 日本", summary, datetime.now(UTC)).startswith(b"%PDF")


def _summary() -> dict:
    workspace = {"workspace_id": "ws-1", "items": 7, "changed": 2, "new": 1, "with_errors": 0, "runs": 1,
                 "updated_count": 2, "unchanged_count": 5, "failed_count": 0}
    return {
        "period": {"start": "2024-03-03T23:00:00+00:00", "end": "2024-03-10T23:00:00+00:00", "days": 7},
        "jobs": {"runs": 1, "completed": 1, "failed": 0, "failure_rate": 0.0, "queues": [], "failing_tasks": [],
                 "errors": []},
        "sync": {"workspaces_total": 1, **{k: v for k, v in workspace.items() if k != "workspace_id"},
                 "workspaces": [workspace]},
    }


def test_the_html_template_prints_every_figure_as_a_value_and_refuses_a_python_object():
    summary = _summary()
    page = _report_render.html("Weekly", summary, datetime.now(UTC))
    assert_no_python_objects(page)
    assert '<div class="value">7</div><div class="label">items in 1 workspaces</div>' in page  # not dict.items
    assert "<tr><td>ws-1</td><td class=\"n\">7</td>" in page

    # the class of the bug: whatever the template prints must be text or a number, or the render fails
    for section, name, value in (("sync", "items", None), ("sync", "new", {"a": 1}), ("jobs", "runs", [1]),
                                 ("sync", "changed", dict.items), ("jobs", "failed", True)):
        broken = {**summary, section: {**summary[section], name: value}}
        with pytest.raises(TypeError, match="would be printed as Python's repr"):
            _report_render.html("Weekly", broken, datetime.now(UTC))
    with pytest.raises(UndefinedError, match="new_count"):  # a figure the summary lacks is an error, not blank
        _report_render._environment().from_string("{{ sync.new_count }}").render(sync=summary["sync"])
