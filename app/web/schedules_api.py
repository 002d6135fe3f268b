"""The admin API for recurring entries and run history: `/api/admin/jobs/schedules...`, `/jobs/logs...`,
`/jobs/status`."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from app.scheduling import schedule_store
from app.store.runs import (
    STATUSES,
    RunFilter,
    duration_percentiles,
    failure_rate,
    latest_run,
    list_runs,
    throughput_per_hour,
)
from app.tasks import get_queue_spec
from app.web import audit
from app.web.auth import require_token
from app.web.db import get_db
from app.web.errors import ApiError
from app.web.params import json_body, optional, page, refuse_unknown_query

bp = Blueprint("admin_schedules", __name__, url_prefix="/api/admin/jobs")
bp.before_request(require_token)
bp.before_request(refuse_unknown_query)
bp.after_request(audit.record)

_PATCHABLE = {"cron_expression", "timezone", "is_active"}


def _schedule(schedule_id: str) -> dict:
    try:
        return schedule_store.get_schedule(get_db(), schedule_id)
    except schedule_store.UnknownScheduleError as exc:
        raise ApiError(404, "schedule_not_found", str(exc)) from None


@bp.get("/schedules")
def schedules():
    """Every recurring entry with its declared and effective cron, state, last and next run."""
    return jsonify(schedules=schedule_store.list_schedules(get_db()))


@bp.get("/schedules/<schedule_id>")
def schedule(schedule_id: str):
    """One recurring entry."""
    return jsonify(_schedule(schedule_id))


@bp.patch("/schedules/<schedule_id>")
def schedule_patch(schedule_id: str):
    """Change an entry at run time: `cron_expression`, `timezone`, `is_active` (kept until cleared)."""
    body = json_body(required=True)
    if not body:
        raise ApiError(400, "invalid_json", "send a JSON object with cron_expression, timezone or is_active")
    unknown = sorted(set(body) - _PATCHABLE)
    if unknown:
        raise ApiError(400, "invalid_request", f"unknown field {unknown[0]!r}; fields: {', '.join(sorted(_PATCHABLE))}")
    active = body.get("is_active")
    if active is not None and not isinstance(active, bool):
        raise ApiError(400, "invalid_request", "is_active must be true or false")
    for field in ("cron_expression", "timezone"):
        if body.get(field) is not None and not isinstance(body[field], str):
            raise ApiError(400, "invalid_request", f"{field} must be a string")
    _schedule(schedule_id)
    row = schedule_store.set_overrides(
        get_db(), schedule_id, enabled=active, cron=body.get("cron_expression"), timezone=body.get("timezone")
    )
    return jsonify(row)


@bp.post("/schedules/<schedule_id>/run")
def schedule_run(schedule_id: str):
    """Run an entry now, outside its cron (409 while a run of it is going)."""
    row = _schedule(schedule_id)
    job_id = schedule_store.fire(get_db(), current_app.extensions["bullrq.redis"], row, slot=None, next_run_at=None)
    if job_id is None:
        raise ApiError(409, "already_running", f"schedule {schedule_id!r} is running already",
                       {"jobId": row["current_job_id"]})
    return jsonify(jobId=job_id, schedule=schedule_id), 201


@bp.post("/schedules/<schedule_id>/reset")
def schedule_reset(schedule_id: str):
    """Free an entry whose run is stuck."""
    _schedule(schedule_id)
    return jsonify(schedule_store.reset(get_db(), schedule_id))


@bp.get("/schedules/<schedule_id>/history")
def schedule_history(schedule_id: str):
    """An entry's runs, newest first."""
    _schedule(schedule_id)
    limit, offset = page()
    return jsonify(list_runs(get_db(), RunFilter(schedule_id=schedule_id), limit, offset))


@bp.get("/logs")
def logs():
    """Runs, newest first: `jobName` (a task type or a schedule id), `status`, `error` (text in the error message);
    `limit` (max 100) and `offset` page."""
    limit, offset = page()
    status = optional("status")
    if status is not None and status not in STATUSES:
        raise ApiError(400, "invalid_request", f"unknown status {status!r}", {"valid": list(STATUSES)})
    where = RunFilter(name=optional("jobName"), status=status, error_text=optional("error"))
    return jsonify(list_runs(get_db(), where, limit, offset))


@bp.get("/logs/<name>/latest")
def logs_latest(name: str):
    """The latest run of a task type or schedule id."""
    run = latest_run(get_db(), RunFilter(name=name))
    if run is None:
        raise ApiError(404, "no_runs", f"no run of {name!r} yet")
    return jsonify(run)


@bp.get("/history-stats")
def history_stats():
    """Throughput per hour, failure rate and duration percentiles per queue over the last `hours` (default 24)."""
    try:
        hours = float(request.args.get("hours", 24))
    except ValueError:
        raise ApiError(400, "invalid_request", "hours must be a number") from None
    if not 1 <= hours <= 24 * 90:
        raise ApiError(400, "invalid_request", "hours must be from 1 to 2160")
    queue = optional("queue")
    if queue is not None:
        get_queue_spec(queue)  # an unknown queue is a 400 naming the valid ones
    db = get_db()
    return jsonify(
        hours=hours,
        throughput=throughput_per_hour(db, queue, hours),
        failure_rate=failure_rate(db, queue, hours),
        durations=duration_percentiles(db, queue, hours),
    )


@bp.get("/status")
def status():
    """Every recurring entry with its latest run and total runs."""
    db = get_db()
    entries = schedule_store.list_schedules(db)
    return jsonify(schedules=[
        {**entry, "latest_run": latest_run(db, RunFilter(schedule_id=entry["id"]))} for entry in entries
    ])  # fmt: skip
