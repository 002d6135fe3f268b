"""The `reports` queue: executive reports of the job system and of the synced data, delivered by notifications.

Task types:
- `reports.generate`, data `{"scheduleId": str, "periodDays"?: number of days from 1 to 366, default 7}`: build
  the report of that row of `report_schedules` for the period ending now (runs, failures, failure rate and
  p50/p95 durations per queue from the run history; synced items and sync runs per workspace), render it in the
  schedule's formats (HTML, CSV, PDF), store it in `reports` (keyed by job id: a retry replaces its row), enqueue
  one `notifications.send` job per recipient (keyed by report and recipient: a retry never notifies twice), then
  set the schedule's `last_run_at` and `next_run_at` (its cron read in its time zone).
- `reports.weekly`, no data (Sunday 23:00 in schedules.yaml): enqueue `reports.generate` for every enabled schedule
  that is due (`next_run_at` passed or never set), 10 per batch, one job per schedule and slot (dedup id
  `report:<schedule>:<slot>`); when no schedule exists at all, build the default executive report itself.

Environment:
- `REPORTS_DEFAULT_RECIPIENTS`: who gets the default report, comma-separated `channel:address` entries
  (`email:ops@example.com,webhook:https://hooks.example.com/r,whatsapp:+351911111111`); unset or empty: the default
  report is stored, not delivered (the job's result says so).
- `REPORTS_DEFAULT_FORMATS`: formats of the default report, comma-separated among html, csv, pdf (default
  `html,csv`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from app.errors import ConfigError, InvalidJobError, PermanentFailure
from app.recipients import Recipient, dedup_id, parse_recipient_list, parse_recipients
from app.tasks import task
from workers._report_delivery import Rendered, notification, one_line

logger = logging.getLogger(__name__)

#: what a report can be rendered as
FORMATS = ("html", "csv", "pdf")
#: days a report covers unless the job says otherwise
DEFAULT_PERIOD_DAYS = 7
#: days: the longest period a report may cover
MAX_PERIOD_DAYS = 366
#: schedules enqueued per batch (one Redis round trip, one progress report each)
BATCH = 10
#: characters a schedule id may have (it travels in dedup ids)
MAX_SCHEDULE_ID = 200
#: characters of a schedule's name kept as the report's title (it heads subjects and WhatsApp messages)
MAX_TITLE = 120
DEFAULT_TITLE = "Executive report"
NOTIFY_TASK = "notifications.send"


@dataclass(frozen=True)
class ReportSettings:
    """The reports queue's settings, from the environment."""

    default_recipients: tuple[Recipient, ...] = ()
    default_formats: tuple[str, ...] = ("html", "csv")

    @classmethod
    def from_env(cls, env: dict | None = None) -> ReportSettings:
        """Read REPORTS_DEFAULT_RECIPIENTS and REPORTS_DEFAULT_FORMATS.

        Raises:
            ConfigError: a value is malformed; the message names the variable (never a webhook URL: it may hold a
                token).
        """
        from app.config import environment

        env = environment(env)
        try:
            recipients = parse_recipient_list(env.get("REPORTS_DEFAULT_RECIPIENTS", ""))
        except ValueError as exc:
            raise ConfigError(f"REPORTS_DEFAULT_RECIPIENTS: {exc}") from None
        raw = env.get("REPORTS_DEFAULT_FORMATS", "").strip()
        try:
            formats = check_formats([part.strip().lower() for part in raw.split(",") if part.strip()]) if raw else None
        except ValueError as exc:
            raise ConfigError(f"REPORTS_DEFAULT_FORMATS: {exc}") from None
        return cls(tuple(recipients), formats or cls.default_formats)


def check_formats(formats: object) -> tuple[str, ...]:
    """The formats in FORMATS order, each once.

    Raises:
        ValueError: one of them is not html, csv or pdf.
    """
    if not isinstance(formats, list | tuple):
        raise ValueError("formats must be a list of html, csv, pdf")
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown format {unknown[0]!r}; formats are {', '.join(FORMATS)}")
    return tuple(f for f in FORMATS if f in formats)


@dataclass(frozen=True)
class ReportSpec:
    """What to build and for whom."""

    title: str
    schedule_id: str | None
    recipients: tuple[Recipient, ...]
    formats: tuple[str, ...]
    period_days: float


def _validate_generate(kwargs: dict) -> None:
    schedule_id = kwargs.get("schedule_id")
    if not isinstance(schedule_id, str) or not schedule_id.strip() or len(schedule_id) > MAX_SCHEDULE_ID:
        raise InvalidJobError(f"reports.generate: scheduleId must be a non-empty string of at most "
                              f"{MAX_SCHEDULE_ID} characters")
    days = kwargs.get("period_days", DEFAULT_PERIOD_DAYS)
    if isinstance(days, bool) or not isinstance(days, int | float) or not 1 <= days <= MAX_PERIOD_DAYS:
        raise InvalidJobError(f"reports.generate: periodDays must be a number of days from 1 to {MAX_PERIOD_DAYS}")


@task("reports.generate", queue="reports", validate=_validate_generate)
def generate(schedule_id: str, period_days: float = DEFAULT_PERIOD_DAYS) -> dict:
    """Build schedule `schedule_id`'s report for the `period_days` ending now, store it, hand it to notifications and
    compute the schedule's next run."""
    from app.runtime import progress, resources

    now = datetime.now(UTC)
    with resources.database() as conn:
        row = conn.execute("SELECT * FROM report_schedules WHERE id = %s", [schedule_id]).fetchone()
    spec, next_run = _schedule_spec(schedule_id, row, period_days, now)
    result = _build(spec, now)
    with resources.database() as conn:
        conn.execute("UPDATE report_schedules SET last_run_at = %s, next_run_at = %s WHERE id = %s",
                     [now, next_run, schedule_id])
    progress.report(percent=100, message=f"schedule updated: next run {next_run.isoformat()}")
    logger.info("report schedule %s: report %s built, next run %s", schedule_id, result["report_id"], next_run)
    return {**result, "next_run_at": next_run.isoformat()}


def _schedule_spec(schedule_id: str, row: dict | None, period_days: float, now: datetime):
    """The report a schedule row asks for and the schedule's next run after `now` (its cron in its zone), checked
    before any work: PermanentFailure naming the schedule when it cannot run."""
    from app.scheduling.cron import Cron, CronError

    if row is None:
        raise PermanentFailure(f"report schedule {schedule_id!r} does not exist")
    if not row["enabled"]:
        raise PermanentFailure(f"report schedule {schedule_id!r} is disabled")
    try:
        cron = Cron(row["cron"], row["timezone"])
        recipients = parse_recipients(row["recipients"])
        formats = check_formats(list(row["formats"] or []))
    except (CronError, ValueError) as exc:
        raise PermanentFailure(f"report schedule {schedule_id!r}: {exc}") from None
    try:
        next_run = cron.next_after(now)
    except (CronError, ValueError) as exc:  # croniter raises ValueError for a day that never comes (Feb 31)
        raise PermanentFailure(f"report schedule {schedule_id!r}: cron {cron.expression!r} never fires "
                               f"({exc})") from None
    title = one_line(row["name"] or DEFAULT_TITLE, MAX_TITLE)
    return ReportSpec(title, schedule_id, tuple(recipients), formats, period_days), next_run


@task("reports.weekly", queue="reports")
def weekly() -> dict:
    """Enqueue reports.generate for every enabled report schedule that is due, 10 per batch; with no schedule at all,
    build and deliver the default executive report."""
    from app.runtime import resources

    now = datetime.now(UTC)
    with resources.database() as conn:
        counts = conn.execute(
            "SELECT count(*) AS schedules, count(*) FILTER (WHERE enabled AND (next_run_at IS NULL OR "
            "next_run_at <= %s)) AS due FROM report_schedules", [now],
        ).fetchone()  # fmt: skip
    if counts["schedules"] == 0:
        return _default_report(now)
    return _enqueue_due(now, counts["due"])


def _enqueue_due(now: datetime, due: int) -> dict:
    """Enqueue a reports.generate job per due schedule, BATCH at a time, in id order."""
    from app.runtime import progress, resources
    from app.runtime.enqueue import enqueue_many

    jobs: list[dict] = []
    invalid: list[str] = []
    after, batches = "", 0
    while True:
        with resources.database() as conn:
            rows = conn.execute(
                "SELECT id, next_run_at FROM report_schedules WHERE enabled AND (next_run_at IS NULL OR "
                "next_run_at <= %s) AND id > %s ORDER BY id LIMIT %s", [now, after, BATCH],
            ).fetchall()  # fmt: skip
        if not rows:
            break
        after, batches = rows[-1]["id"], batches + 1
        requests, ids = [], []
        for row in rows:
            try:
                _validate_generate({"schedule_id": row["id"]})
            except InvalidJobError as exc:  # one bad row must not stop the others
                logger.warning("report schedule %r: not enqueued: %s", row["id"][:MAX_SCHEDULE_ID], exc)
                invalid.append(row["id"][:MAX_SCHEDULE_ID])
                continue
            requests.append(("reports.generate", {"scheduleId": row["id"]}, {"jobId": slot_key(row)}))
            ids.append(row["id"])
        outcomes = enqueue_many(resources.redis_client(), requests) if requests else []
        jobs += [{"schedule_id": i, "job_id": o.id, "created": o.created} for i, o in zip(ids, outcomes, strict=True)]
        progress.report(percent=100 * min(1.0, (len(jobs) + len(invalid)) / max(due, 1)),
                        message=f"batch {batches}: {len(requests)} schedules enqueued",
                        processed=len(jobs), failed=len(invalid))
        if len(rows) < BATCH:
            break
    progress.report(percent=100, message=f"{len(jobs)} due schedules in {batches} batches", processed=len(jobs),
                    failed=len(invalid))
    created = sum(1 for job in jobs if job["created"])
    logger.info("reports.weekly: %d schedules due, %d enqueued, %d already pending", len(jobs), created,
                len(jobs) - created)
    return {"schedules_due": len(jobs) + len(invalid), "enqueued": created, "already_pending": len(jobs) - created,
            "invalid": invalid, "batches": batches, "jobs": jobs}


def slot_key(row: dict) -> str:
    """The dedup id of a schedule's run for its current slot: a second enqueue for the same slot, while the first
    job is pending, returns the first."""
    slot = int(row["next_run_at"].timestamp()) if row["next_run_at"] else "first"
    return dedup_id(f"report:{row['id']}:{slot}")


def _default_report(now: datetime) -> dict:
    """The executive report addressed to REPORTS_DEFAULT_RECIPIENTS, when no schedule exists."""
    try:
        settings = ReportSettings.from_env()
    except ConfigError as exc:
        raise PermanentFailure(str(exc)) from None
    spec = ReportSpec(DEFAULT_TITLE, None, settings.default_recipients, settings.default_formats, DEFAULT_PERIOD_DAYS)
    result = _build(spec, now)
    if not spec.recipients:
        result["note"] = ("no report schedule exists and REPORTS_DEFAULT_RECIPIENTS is empty: the report is stored, "
                          "not delivered")
    from app.runtime import progress

    progress.report(percent=100, message="default report done")
    return {"default_report": True, **result}


def _build(spec: ReportSpec, now: datetime) -> dict:
    """Read the figures, render, store and deliver one report; progress is reported after each section."""
    from app.runtime import progress, resources
    from workers import _report_data as data
    from workers import _report_render as render

    job_id = progress.current_job().id
    stored = _stored(job_id, spec)
    if stored is not None:
        # a retry delivers the report its first attempt stored: the same content under the same notification keys
        # (a key reused with other content is refused by the notifications queue)
        report_id, summary, files = stored
        start, end = (datetime.fromisoformat(summary["period"][bound]) for bound in ("start", "end"))
        progress.report(percent=75, message=f"report {report_id} stored by an earlier attempt")
    else:
        start, end = data.period_bounds(now, spec.period_days)
        progress.report(percent=5, message="reading the job history")
        section_percent = {"job history": 25, "synced data": 40}
        with resources.database() as conn:
            summary = data.summary(conn, start, end, spec.period_days,
                                   sections=lambda name: progress.report(percent=section_percent[name],
                                                                         message=f"{name} read"))
        summary = {"title": spec.title, "generated_at": now.isoformat(), **summary}
        files = _render(spec, summary, now)
        report_id = _store(job_id, spec, start, end, summary, files)
        progress.report(percent=75, message=f"report {report_id} stored")
    text = render.text(spec.title, summary)
    rendered = Rendered(
        report_id=report_id, title=spec.title, subject=render.subject(spec.title, summary), text=text,
        payload=_payload(report_id, spec, summary, text, files),
        html=files.get("html"), csv=files.get("csv"), pdf=files.get("pdf"),
    )  # fmt: skip
    notifications = _deliver(rendered, spec)
    progress.report(percent=90, message=f"{len(notifications)} notifications enqueued", processed=len(notifications))
    jobs = summary["jobs"]
    return {
        "report_id": report_id,
        "schedule_id": spec.schedule_id,
        "period_start": start.isoformat(),
        "period_end": end.isoformat(),
        "formats": list(spec.formats),
        "figures": {"runs": jobs["runs"], "failed": jobs["failed"], "failure_rate": jobs["failure_rate"],
                    "items": summary["sync"]["items"], "changed": summary["sync"]["changed"]},
        "delivered": bool(notifications),
        "notifications": notifications,
    }


def _render(spec: ReportSpec, summary: dict, now: datetime) -> dict:
    """The report in each of the spec's formats: {"html": str, "csv": str, "pdf": bytes}."""
    from app.runtime import progress
    from workers import _report_render as render

    renderers = {
        "html": lambda: render.html(spec.title, summary, now),
        "csv": lambda: render.csv_text(spec.title, summary),
        "pdf": lambda: render.pdf(spec.title, summary, now),
    }
    files = {}
    for step, kind in enumerate(spec.formats, 1):
        files[kind] = renderers[kind]()
        progress.report(percent=40 + 30 * step / len(spec.formats), message=f"{kind} rendered")
    return files


def _stored(job_id: str, spec: ReportSpec) -> tuple[int, dict, dict] | None:
    """(id, summary, files) of the report an earlier attempt of job `job_id` stored in every format of `spec`."""
    from app.runtime import resources

    with resources.database() as conn:
        row = conn.execute("SELECT id, summary, html, csv, pdf FROM reports WHERE job_id = %s", [job_id]).fetchone()
    if row is None or any(row[kind] is None for kind in spec.formats):
        return None
    files = {kind: bytes(row[kind]) if kind == "pdf" else row[kind] for kind in spec.formats}
    return row["id"], row["summary"], files


def _store(job_id: str, spec: ReportSpec, start: datetime, end: datetime, summary: dict, files: dict) -> int:
    """Upsert the report row of job `job_id` (a retry replaces it and keeps its id); returns the id."""
    from psycopg.types.json import Jsonb

    from app.runtime import resources

    with resources.database() as conn:
        return conn.execute(
            "INSERT INTO reports (job_id, schedule_id, period_start, period_end, summary, html, csv, pdf) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (job_id) DO UPDATE SET "
            "schedule_id = EXCLUDED.schedule_id, period_start = EXCLUDED.period_start, "
            "period_end = EXCLUDED.period_end, summary = EXCLUDED.summary, html = EXCLUDED.html, "
            "csv = EXCLUDED.csv, pdf = EXCLUDED.pdf RETURNING id",
            [job_id, spec.schedule_id, start, end, Jsonb(summary), files.get("html"), files.get("csv"),
             files.get("pdf")],
        ).fetchone()["id"]


def _payload(report_id: int, spec: ReportSpec, summary: dict, text: str, files: dict) -> dict:
    """The body a webhook recipient receives: the figures and the report itself (the same text, HTML page and
    files an e-mail recipient gets: `content.html`, `content.attachments` with base64 bodies)."""
    from workers._report_delivery import attachments

    content = {"text": text, "attachments": attachments(report_id, files)}
    if files.get("html") is not None:
        content["html"] = files["html"]
    return {"event": "report.generated", "report_id": report_id, "schedule_id": spec.schedule_id,
            "title": spec.title, "formats": list(spec.formats), "summary": summary, "content": content}


def _deliver(report: Rendered, spec: ReportSpec) -> list[dict]:
    """Enqueue a notifications.send job per recipient, all validated before any is sent; returns them."""
    recipients = spec.recipients
    if not recipients:
        return []
    from app.errors import UnknownTaskError
    from app.runtime import resources
    from app.runtime.enqueue import enqueue_many

    requests = [(NOTIFY_TASK, *notification(report, recipient)) for recipient in recipients]
    try:
        outcomes = enqueue_many(resources.redis_client(), requests)
    except UnknownTaskError:
        raise PermanentFailure(f"task type {NOTIFY_TASK} is not registered (workers/notifications.py missing): "
                               f"report {report.report_id} is stored, not delivered") from None
    except InvalidJobError as exc:
        where = f"report schedule {spec.schedule_id!r}" if spec.schedule_id else "REPORTS_DEFAULT_RECIPIENTS"
        raise PermanentFailure(f"{where}: report {report.report_id} is stored, but {NOTIFY_TASK} refused a "
                               f"message: {exc}") from None
    return [
        {"channel": r.channel, "to": r.to, "job_id": o.id, "created": o.created}
        for r, o in zip(recipients, outcomes, strict=True)
    ]
