"""The product's own pages (what rq-dashboard lacks), rendered on the server: Overview, Schedules, History, Jobs,
and one page per batch.

Tables are filled by the functions the admin API uses. Every button is a plain form posted to an action route
here, which calls the same control function, is audited like the API, flashes its outcome and redirects back
(POST/redirect/GET). Charts are inline SVG drawn here; no page needs JavaScript (admin.js only offers a refresh).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from psycopg_pool import PoolTimeout
from redis.exceptions import RedisError
from werkzeug.exceptions import HTTPException

from app.alerts import store as alert_store
from app.errors import BullrqError, UnknownQueueError
from app.runtime import control
from app.runtime.flows import batch_status
from app.runtime.job_list import list_jobs
from app.runtime.jobs import BullJob, State, describe_job, fetch_job, state_of
from app.runtime.stats import queue_stats
from app.scheduling import schedule_store
from app.scheduling.scheduler import liveness
from app.store.runs import STATUSES, RunFilter, duration_percentiles, failure_rate, list_runs, throughput_per_hour
from app.tasks import get_queue_spec
from app.web import audit
from app.web.auth import require_login
from app.web.db import get_db
from app.web.errors import ApiError
from queues import BATCH_TTL, dependents_key, queue_names

logger = logging.getLogger(__name__)

bp = Blueprint("pages", __name__, url_prefix="/admin", template_folder="templates", static_folder="static",
               static_url_path="/static")  # fmt: skip

#: the pages in the navigation, in order
NAV = (("pages.overview", "Overview"), ("pages.schedules", "Schedules"), ("pages.history", "History"),
       ("pages.jobs", "Jobs"))  # fmt: skip
#: history windows offered, in hours
WINDOWS = {24: "24 hours", 168: "7 days"}
#: runs per page of the runs search
RUNS_PAGE = 50
#: cleared alerts the overview lists
RECENT_ALERTS = 10
#: jobs per page of the jobs-by-state list
JOBS_PAGE = 50
#: the jobs waiting for one job that its view lists
DEPENDENTS_SHOWN = 50
#: the furthest a list pages (beyond, Redis' and PostgreSQL's integers end)
MAX_OFFSET = 10**9
#: longest job or batch id the pages look up (ours are 36 characters; a longer one is no id of ours)
MAX_ID = 200
#: seconds: the default age of the jobs the overview's clean button removes
CLEAN_AGE = 3600
#: chart geometry in SVG user units: plot width, left margin (y labels), bottom margin (x labels), top margin
PLOT_WIDTH, LEFT, BOTTOM, TOP = 720, 36, 16, 6


@bp.before_request
def _login():
    """Pages need a session (or a token); a change posted without one is refused outright, not sent to log in."""
    if request.method == "POST" and not (session.get("admin") or request.headers.get("Authorization")):
        raise ApiError(401, "unauthorized", "sign in first: this change was not made")
    refused = require_login()
    if refused is None and request.method == "POST":
        request.get_data()  # keep the form's bytes for the audit row (parsing the form would consume them)
    return refused


@bp.after_request
def _audit(response: Response) -> Response:
    """Actions are recorded by the API's audit hook, with their outcome (not the redirect) as status and result."""
    if request.method == "POST":
        status, result = g.pop("outcome", (response.status_code, None))
        audit.record(Response(json.dumps(result) if result is not None else b"", status=status,
                              mimetype="application/json"))  # fmt: skip
    return response


@bp.errorhandler(Exception)
def _error_page(exc: Exception):
    """Errors on the pages are pages too: 404 for an unknown queue, schedule or route, 503 for a store that is down."""
    status, code, message = _describe(exc)
    if request.method == "POST":
        g.outcome = (status, {"error": {"code": code, "message": message}})
    return render_template("error.html", status=status, message=message), status


def _describe(exc: Exception) -> tuple[int, str, str]:
    if isinstance(exc, ApiError):
        return exc.status, exc.code, exc.message
    if isinstance(exc, UnknownQueueError | schedule_store.UnknownScheduleError):
        return 404, "not_found", str(exc)
    if isinstance(exc, HTTPException):
        return exc.code or 500, (exc.name or "error").lower().replace(" ", "_"), exc.description or exc.name
    if isinstance(exc, RedisError):
        logger.warning("page %s failed: Redis unavailable: %s", request.path, exc)
        return 503, "redis_unavailable", "Redis is unreachable; try again shortly."
    if isinstance(exc, psycopg.OperationalError | PoolTimeout):
        logger.warning("page %s failed: PostgreSQL unavailable: %s", request.path, exc)
        return 503, "postgres_unavailable", "PostgreSQL is unreachable; try again shortly."
    if isinstance(exc, BullrqError):
        return 400, "invalid_request", str(exc)
    logger.exception("page %s failed", request.path)
    return 500, "internal_error", "An unexpected error occurred; it has been logged."


@bp.context_processor
def _layout() -> dict:
    return {"nav": NAV}


@bp.app_template_filter("when")
def _when(moment: datetime | str | None) -> str:
    """A time as `2024-05-01 13:00:05 UTC`; '-' for none."""
    if not moment:
        return "-"
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@bp.app_template_filter("ms")
def _ms(value: float | None) -> str:
    return f"{value:,.1f} ms" if isinstance(value, int | float) else "-"


@bp.app_template_filter("percent")
def _percent(value: float | None) -> str:
    return f"{value * 100:.1f} %" if isinstance(value, int | float) else "-"


@bp.app_template_filter("pretty_json")
def _pretty_json(value) -> str:
    """JSON for people; the template escapes it, so markup in job data stays text."""
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _redis():
    return current_app.extensions["bullrq.redis"]


def _done(endpoint: str, message: str, result: dict, status: int = 200):
    """Flash an action's outcome and send the browser back to `endpoint` (POST/redirect/GET)."""
    g.outcome = (status, result)
    flash(message, "ok")
    return redirect(url_for(endpoint), 303)


def _refused(endpoint: str, status: int, code: str, message: str):
    g.outcome = (status, {"error": {"code": code, "message": message}})
    flash(message, "error")
    return redirect(url_for(endpoint), 303)


# ---------------------------------------------------------------------------------------------------------- overview


@bp.get("/")
def overview():
    """Open and recent alerts; whether a scheduler is active; per queue: waiting, running, scheduled, deferred,
    failed, paused, throughput and workers, with the queue controls."""
    return render_template("overview.html", stats=queue_stats(_redis()), runs=_recent_runs(), alerts=_alerts(),
                           scheduler=liveness(_redis()), clean_states=control.CLEANABLE,
                           clean_age=CLEAN_AGE)  # fmt: skip


def _alerts() -> dict | None:
    """Open, pending and recently cleared alerts, or None while PostgreSQL is unreachable."""
    try:
        return alert_store.list_alerts(get_db(), recent_limit=RECENT_ALERTS)
    except (psycopg.Error, PoolTimeout) as exc:
        logger.warning("overview: no alerts: %s", exc)
        return None


def _recent_runs() -> dict[str, dict] | None:
    """Finished runs per queue over the last hour and day, or None while PostgreSQL is unreachable (the counts
    from Redis still show)."""
    try:
        db = get_db()
        hour = {row["queue"]: row for row in failure_rate(db, hours=1)}
        day = {row["queue"]: row for row in failure_rate(db, hours=24)}
    except (psycopg.Error, PoolTimeout) as exc:
        logger.warning("overview: no run history: %s", exc)
        return None
    empty = {"total": 0, "failed": 0, "rate": 0.0}
    return {name: {"hour": hour.get(name, empty), "day": day.get(name, empty)} for name in queue_names()}


@bp.post("/queues/<name>/<action>")
def queue_action(name: str, action: str):
    """Pause, resume, retry the failed jobs of, or clean (`state`, `age` in seconds) one queue."""
    queue = get_queue_spec(name).name
    redis = _redis()
    if action in ("pause", "resume"):
        (control.pause if action == "pause" else control.resume)(redis, queue)
        return _done("pages.overview", f"{queue}: {action}d", {"action": action, "queues": [queue]})
    if action == "retry-failed":
        requeued = len(control.retry_failed(redis, queue))
        return _done("pages.overview", f"{queue}: {requeued} failed job(s) requeued",
                     {"action": action, "requeued": {queue: requeued}})  # fmt: skip
    if action == "clean":
        state = request.form.get("state", "completed")
        try:
            age = float(request.form.get("age", CLEAN_AGE))
        except ValueError:
            age = -1.0
        if state not in control.CLEANABLE or not 0 <= age < float("inf"):
            return _refused("pages.overview", 400, "invalid_request",
                            f"{queue}: clean needs a state ({', '.join(control.CLEANABLE)}) and an age in seconds "
                            ">= 0")  # fmt: skip
        removed = control.clean(redis, queue, state, age)
        return _done("pages.overview", f"{queue}: {removed} {state} job(s) older than {age:g} s removed",
                     {"action": action, "state": state, "removed": {queue: removed}})  # fmt: skip
    abort(404, f"no queue action {action!r}; actions: pause, resume, retry-failed, clean")


# --------------------------------------------------------------------------------------------------------- schedules


@bp.get("/schedules")
def schedules():
    """Every recurring entry: cron in force, state, next and last run, last status, with its controls."""
    return render_template("schedules.html", schedules=schedule_store.list_schedules(get_db()))


@bp.post("/schedules/<schedule_id>/<action>")
def schedule_action(schedule_id: str, action: str):
    """Enable, disable, run now, or reset (free a stuck run of) one recurring entry."""
    db = get_db()
    row = schedule_store.get_schedule(db, schedule_id)
    if action in ("enable", "disable"):
        row = schedule_store.set_overrides(db, schedule_id, enabled=action == "enable")
        return _done("pages.schedules", f"{schedule_id}: {action}d",
                     {"schedule": schedule_id, "is_active": row["effective_enabled"]})  # fmt: skip
    if action == "run":
        job_id = schedule_store.fire(db, _redis(), row, slot=None, next_run_at=None)
        if job_id is None:
            return _refused("pages.schedules", 409, "already_running",
                            f"{schedule_id}: a run is going already (job {row['current_job_id']})")  # fmt: skip
        return _done("pages.schedules", f"{schedule_id}: started job {job_id}",
                     {"jobId": job_id, "schedule": schedule_id}, 201)  # fmt: skip
    if action == "reset":
        schedule_store.reset(db, schedule_id)
        return _done("pages.schedules", f"{schedule_id}: reset, it may run again",
                     {"schedule": schedule_id, "action": action})  # fmt: skip
    abort(404, f"no schedule action {action!r}; actions: enable, disable, run, reset")


# ----------------------------------------------------------------------------------------------------------- history


@dataclass(frozen=True)
class Bar:
    """One hour's bar: runs by outcome, and the stacked segments (kind, y, height) drawn for them."""

    hour: datetime
    x: float
    width: float
    completed: int
    failed: int
    other: int  #: retried or canceled attempts
    segments: tuple[tuple[str, float, float], ...]


@dataclass(frozen=True)
class Chart:
    """A bar chart of runs per hour over a window, with its caption's figures."""

    key: str
    title: str
    height: int  #: of the plot area
    peak: int  #: runs in the busiest hour (the top of the y axis)
    bars: tuple[Bar, ...]
    ticks: tuple[tuple[float, str], ...]  #: x positions and labels of the time axis
    runs: int
    rate: float | None
    p95: float | None
    p95_note: str = ""

    @property
    def width(self) -> int:
        return LEFT + PLOT_WIDTH + 4

    @property
    def full_height(self) -> int:
        return TOP + self.height + BOTTOM

    @property
    def left(self) -> int:
        return LEFT

    @property
    def axis_y(self) -> int:
        """The y of the time axis (the bars' bottom)."""
        return TOP + self.height


def window_start(hours: int, now: datetime | None = None) -> datetime:
    """The first hour a window of `hours` covers (the rollup's windows begin on the hour)."""
    return ((now or datetime.now(UTC)) - timedelta(hours=hours)).replace(minute=0, second=0, microsecond=0)


def draw_chart(key: str, title: str, rows: list[dict], start: datetime, hours: int, height: int, *,
               rate: float | None = None, p95: float | None = None, p95_note: str = "") -> Chart:  # fmt: skip
    """Lay out `rows` (throughput_per_hour rows, of one queue or all) as bars per hour from `start` on."""
    slots = hours + 1  # the window's first hour through the current one
    per_hour: dict[datetime, list[int]] = {}
    for row in rows:
        counts = per_hour.setdefault(row["hour"], [0, 0, 0])
        counts[0] += row["completed"]
        counts[1] += row["failed"]
        counts[2] += row["total"]
    peak = max((total for _, _, total in per_hour.values()), default=0)
    slot = PLOT_WIDTH / slots
    gap = 1 if slot > 3 else 0
    bars = []
    for hour, (completed, failed, total) in sorted(per_hour.items()):
        index = int((hour - start).total_seconds() // 3600)
        if not 0 <= index < slots or not total:
            continue
        other = max(0, total - completed - failed)
        bottom, segments = TOP + height, []
        for kind, count in (("completed", completed), ("failed", failed), ("other", other)):
            if count:
                size = count / peak * height
                bottom -= size
                segments.append((kind, round(bottom, 2), round(size, 2)))
        bars.append(Bar(hour, round(LEFT + index * slot + gap / 2, 2), round(slot - gap, 2), completed, failed, other,
                        tuple(segments)))  # fmt: skip
    ticks = []
    for index in range(slots):
        moment = start + timedelta(hours=index)
        if hours <= 48 and moment.hour % 6 == 0:
            ticks.append((round(LEFT + index * slot, 2), moment.strftime("%H:00")))
        elif hours > 48 and moment.hour == 0:
            ticks.append((round(LEFT + index * slot, 2), moment.strftime("%a %d")))
    return Chart(key, title, height, peak, tuple(bars), tuple(ticks), sum(c[2] for c in per_hour.values()), rate,
                 p95, p95_note)  # fmt: skip


def _window() -> int:
    raw = request.args.get("hours", "24")
    if not raw.isdigit() or int(raw) not in WINDOWS:
        raise ApiError(400, "invalid_request", f"hours must be one of {', '.join(map(str, WINDOWS))}")
    return int(raw)


@bp.get("/history")
def history():
    """Runs per hour (completed and failed), failure rate and duration percentiles, overall and per queue."""
    hours = _window()
    db = get_db()
    throughput = throughput_per_hour(db, None, hours)
    rates = {row["queue"]: row for row in failure_rate(db, None, hours)}
    durations = {row["queue"]: row for row in duration_percentiles(db, None, hours)}
    start = window_start(hours)
    runs, failed = sum(r["total"] for r in rates.values()), sum(r["failed"] for r in rates.values())
    slowest = max(durations.values(), key=lambda d: d["p95"] or 0, default=None)
    overall = draw_chart("all", "All queues", throughput, start, hours, 120, rate=failed / runs if runs else None,
                         p95=slowest["p95"] if slowest else None,
                         p95_note=f" (slowest queue, {slowest['queue']})" if slowest else "")  # fmt: skip
    per_queue = [
        draw_chart(name, name, [row for row in throughput if row["queue"] == name], start, hours, 60,
                   rate=rates[name]["rate"] if name in rates else None, p95=durations.get(name, {}).get("p95"))
        for name in queue_names()
    ]  # fmt: skip
    no_runs = {"total": 0, "failed": 0, "rate": None, "p50": None, "p95": None, "p99": None, "mean": None}
    table = [{**no_runs, **rates.get(name, {}), **durations.get(name, {}), "queue": name} for name in queue_names()]
    return render_template("history.html", hours=hours, windows=WINDOWS, overall=overall, charts=per_queue,
                           table=table, start=start)  # fmt: skip


# -------------------------------------------------------------------------------------------------------------- jobs


def _offset(name: str = "offset") -> int:
    raw = request.args.get(name, "0")
    if not (raw.isascii() and raw.isdigit()) or int(raw) > MAX_OFFSET:
        raise ApiError(400, "invalid_request", f"{name} must be a whole number from 0 to {MAX_OFFSET}")
    return int(raw)


def _id_arg(value: str, what: str) -> str:
    """A job or batch id from a URL, checked: a 400 page for one no id of ours could be, never a 5xx."""
    if len(value) > MAX_ID or not value.isprintable():
        raise ApiError(400, "invalid_request", f"a {what} id is at most {MAX_ID} printable characters")
    return value


@bp.get("/jobs")
def jobs():
    """Find a job by id (as the API describes it, error included, with its parents and its batch), list the jobs
    in Redis of one state (deferred ones included), and search runs by name, status and error."""
    db = get_db()
    job_id = _id_arg(request.args.get("id", "").strip(), "job")
    job = job_runs = family = None
    status = 200
    if job_id:
        found = fetch_job(job_id, _redis())
        job = describe_job(found) if found is not None else None
        family = _family(job) if job is not None else None
        job_runs = list_runs(db, RunFilter(job_id=job_id), RUNS_PAGE)["runs"]
        if job is None and not job_runs:
            status = 404
    listing = _jobs_by_state()
    search = {key: request.args.get(key, "").strip() for key in ("name", "status", "error")}
    if search["status"] and search["status"] not in STATUSES:
        raise ApiError(400, "invalid_request", f"unknown status {search['status']!r}; statuses: {', '.join(STATUSES)}")
    if any("\x00" in value for value in search.values()):
        raise ApiError(400, "invalid_request", "a search term cannot hold a NUL character")
    offset = _offset()
    where = RunFilter(name=search["name"] or None, status=search["status"] or None,
                      error_text=search["error"] or None)  # fmt: skip
    found_runs = list_runs(db, where, RUNS_PAGE, offset)
    query = {key: value for key, value in search.items() if value}
    newer = url_for("pages.jobs", **query, offset=max(0, offset - RUNS_PAGE)) if offset else None
    older = url_for("pages.jobs", **query, offset=offset + RUNS_PAGE) if found_runs["has_more"] else None
    return render_template("jobs.html", job_id=job_id, job=job, family=family, job_runs=job_runs, search=search,
                           statuses=STATUSES, runs=found_runs, newer=newer, older=older, listing=listing,
                           states=[state.value for state in State], queues=queue_names()), status  # fmt: skip


def _family(job: dict) -> dict:
    """The jobs a job waits for (`parents`: id, state, queue; None for one gone from Redis) and those waiting for
    it (`dependents`, the first DEPENDENTS_SHOWN ids, and how many there are)."""
    redis = _redis()
    parents = job["depends_on"] or []
    found = BullJob.fetch_many(parents, connection=redis) if parents else []
    dependents = sorted(member.decode() for member in redis.smembers(dependents_key(job["id"])))
    return {
        "parents": [{"id": parent, "state": _state_name(one), "queue": one.origin if one else None}
                    for parent, one in zip(parents, found, strict=True)],
        "dependents": dependents[:DEPENDENTS_SHOWN],
        "dependents_total": len(dependents),
    }  # fmt: skip


def _state_name(job: BullJob | None) -> str | None:
    if job is None:
        return None
    state = state_of(job.get_status(refresh=False))
    return state.value if state else None


def _jobs_by_state() -> dict | None:
    """The page of jobs in Redis the `state` (and `queue`, `state_offset`) arguments ask for; None without a
    state."""
    raw_state, queue = request.args.get("state", "").strip(), request.args.get("queue", "").strip()
    if not raw_state and not queue:
        return None
    if raw_state not in set(State):
        raise ApiError(400, "invalid_request",
                       f"state must be one of {', '.join(State)}, not {raw_state!r}")  # fmt: skip
    if queue and queue not in queue_names():
        raise ApiError(400, "invalid_request", f"unknown queue {queue!r}; queues: {', '.join(queue_names())}")
    offset = _offset("state_offset")
    page = list_jobs(_redis(), State(raw_state), queue or None, JOBS_PAGE, offset)
    query = {"state": raw_state, **({"queue": queue} if queue else {})}
    page["state"], page["queue"] = raw_state, queue
    page["newer"] = url_for("pages.jobs", **query, state_offset=max(0, offset - JOBS_PAGE)) if offset else None
    more = offset + len(page["jobs"]) < page["total"] and page["jobs"]
    page["older"] = url_for("pages.jobs", **query, state_offset=offset + JOBS_PAGE) if more else None
    return page


# ----------------------------------------------------------------------------------------------------------- batches


@bp.get("/batches")
def batch_find():
    """Go to the page of the batch named by `id` (the jobs page's form)."""
    batch_id = _id_arg(request.args.get("id", "").strip(), "batch")
    if not batch_id:
        raise ApiError(400, "invalid_request", "give a batch id")
    return redirect(url_for("pages.batch", batch_id=batch_id), 303)


@bp.get("/batches/<batch_id>")
@bp.get("/batches/<path:batch_id>")  # an id with a slash gets the 404 page too
def batch(batch_id: str):
    """A batch: its state, how many of its jobs are pending, completed, failed and canceled, and its callbacks."""
    shown = batch_status(_redis(), _id_arg(batch_id, "batch"))
    if shown is None:
        raise ApiError(404, "batch_not_found",
                       f"no batch {batch_id!r} (never created, or ended over {BATCH_TTL // 86400} days ago)")
    return render_template("batch.html", batch=shown)
