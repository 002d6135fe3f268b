"""The admin API (SPEC "Admin HTTP API"): worker and queue controls, job creation and inspection."""

from __future__ import annotations

import copy
import functools
import time

from flask import Blueprint, current_app, jsonify, request

from app.connections import eviction_policy, eviction_problem
from app.errors import InvalidJobError, JobStateError
from app.runtime import control
from app.runtime.enqueue import enqueue, request_from_json
from app.runtime.flows import batch_from_json, batch_status, create_batch
from app.runtime.groups import group_stats
from app.runtime.job_list import list_jobs
from app.runtime.jobs import State, describe_job, fetch_job
from app.runtime.stats import queue_stats
from app.scheduling.schedule_store import sync_declared
from app.scheduling.schedules import ScheduleError, load_schedules
from app.store.runs import RunFilter, failure_rate, list_runs
from app.tasks import get_queue_spec, load_tasks
from app.web import audit, health
from app.web.auth import require_token
from app.web.db import get_db
from app.web.errors import ApiError
from app.web.params import json_body, openapi_document, optional, page, refuse_unknown_query
from queues import BATCH_TTL, queue_names

bp = Blueprint("admin", __name__, url_prefix="/api/admin")
bp.before_request(require_token)
bp.before_request(refuse_unknown_query)
bp.after_request(audit.record)

#: the body fields of each control action (`state` is the older name of clean's `status`)
#: health thresholds: a queue with more waiting jobs, or a failure rate over the last hour above this, is degraded
BACKLOG_LIMIT = 10_000
FAILURE_RATE_LIMIT = 0.2


def _redis():
    return current_app.extensions["bullrq.redis"]


_ABSENT = object()


def _queues(name=_ABSENT) -> list[str]:
    """The queue named (validated), or every queue when none is; an empty name is a 400, never "all"."""
    if name is _ABSENT:
        return queue_names()
    if not isinstance(name, str) or not name:
        raise ApiError(400, "invalid_request", "queueName must be a queue's name; leave it out for every queue")
    return [get_queue_spec(name).name]


#: the fields each control action takes
ACTION_FIELDS = {
    "pause": {"queueName"},
    "resume": {"queueName"},
    "retry-failed": {"queueName", "jobIds"},
    "clean": {"queueName", "status", "state", "grace", "limit"},
    "setup-recurring": set(),
}


def _create_job(body: dict):
    """Create a job of a registered type: 201 with its id, or 200 with the earlier job's id on a dedup hit."""
    job = enqueue(_redis(), *request_from_json(body))
    return jsonify(jobId=job.id, queue=job.origin, type=job.func_name, created=job.created), (
        201 if job.created else 200
    )


def _job_not_found(job_id: str) -> ApiError:
    return ApiError(404, "job_not_found", f"no job {job_id!r} (never created, or expired)")


@bp.get("/openapi.json")
def openapi():
    """The OpenAPI document of this API."""
    return jsonify(_openapi())


#: answers any operation can give, added to each: the token, the request target's size, the servers behind
SHARED_RESPONSES = {"400": "Error", "401": "Unauthorized", "414": "UriTooLong", "503": "Unavailable"}
#: ... and those of an operation that takes a body
BODY_RESPONSES = {"413": "TooLarge", "415": "NotJson"}


@functools.cache
def _openapi() -> dict:
    """openapi.yaml with what the server knows filled in: the queue names and task types as enums, and the
    responses every operation shares (SHARED_RESPONSES, BODY_RESPONSES) listed on each."""
    document = copy.deepcopy(openapi_document())
    schemas = document["components"]["schemas"]
    schemas["QueueName"]["enum"] = queue_names()
    schemas["TaskType"]["enum"] = load_tasks().names()
    for operations in document["paths"].values():
        for operation in operations.values():
            shared = SHARED_RESPONSES | (BODY_RESPONSES if "requestBody" in operation else {})
            for status, name in shared.items():
                operation["responses"].setdefault(status, {"$ref": f"#/components/responses/{name}"})
    return document


@bp.get("/workers")
def workers_get():
    """Queue statistics (`action=stats`), a health verdict (`health-check`) or both with history (`detailed-stats`)."""
    action = request.args.get("action", "stats")
    if action == "stats":
        return jsonify(queue_stats(_redis()))
    if action == "health-check":
        report, status = _health()
        return jsonify(report), status
    if action == "detailed-stats":
        report = queue_stats(_redis())
        report["failure_rate_24h"] = {row["queue"]: row for row in failure_rate(get_db(), hours=24)}
        report["health"], _ = _health(report)
        return jsonify(report)
    raise ApiError(400, "unknown_action", f"unknown action {action!r}", {"valid": ["stats", "health-check",
                                                                               "detailed-stats"]})


def _health(stats: dict | None = None) -> tuple[dict, int]:
    checks, problems = {}, []
    checks["redis"] = health.check_redis()
    if not checks["redis"]["ok"]:
        return {"status": "unhealthy", "checks": checks, "problems": ["redis unreachable"]}, 503
    checks["postgres"] = health.check_postgres()
    if not checks["postgres"]["ok"]:
        return {"status": "unhealthy", "checks": checks, "problems": ["postgres unreachable"]}, 503
    try:
        checks["redis"]["maxmemory_policy"] = policy = eviction_policy(_redis())
        stats = stats or queue_stats(_redis())
        rates = {row["queue"]: row["rate"] for row in failure_rate(get_db(), hours=1)}
    except Exception as exc:  # noqa: BLE001 - any failure here means "unhealthy", reported as such
        checks["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return {"status": "unhealthy", "checks": checks, "problems": ["redis or postgres failed"]}, 503
    if eviction_problem(policy):  # jobs and leases may vanish: not healthy, though everything answers
        problems.append(eviction_problem(policy))
    checks["scheduler"] = health.check_scheduler()
    if not checks["scheduler"]["ok"]:
        problems.append(f"scheduler: {checks['scheduler']['problem']}")
    for name, queue in stats["queues"].items():
        if queue["workers"] == 0:
            problems.append(f"{name}: no worker")
        if queue["waiting"] > BACKLOG_LIMIT:
            problems.append(f"{name}: {queue['waiting']} jobs waiting")
        if rates.get(name, 0) > FAILURE_RATE_LIMIT:
            problems.append(f"{name}: {rates[name]:.0%} of runs failed in the last hour")
    checks["queues"] = {name: {"workers": q["workers"], "waiting": q["waiting"], "paused": q["paused"],
                               "failure_rate_1h": rates.get(name, 0.0)} for name, q in stats["queues"].items()}
    return {"status": "degraded" if problems else "healthy", "checks": checks, "problems": problems,
            "time": time.time()}, 200


@bp.post("/workers")
def workers_post():
    """A control action on one queue or all (`{"action", "queueName"?}`), or a new job (`{"type", "data"}`)."""
    body = json_body()
    if "type" in body:
        return _create_job(body)
    action = body.get("action")
    if not isinstance(action, str) or action not in ACTION_FIELDS:
        raise ApiError(400, "unknown_action", f"unknown action {action!r}", {"valid": list(ACTION_FIELDS)})
    accepted = sorted(ACTION_FIELDS[action] | {"action"})
    unknown = sorted(set(body) - set(accepted))
    if unknown:
        raise ApiError(400, "invalid_request", f"unknown field {unknown[0]!r} for action {action!r}; fields: "
                       f"{', '.join(accepted)}", {"accepted": accepted})  # fmt: skip
    queues = _queues(body.get("queueName", _ABSENT))
    redis = _redis()
    if action == "pause":
        for queue in queues:
            control.pause(redis, queue)
        return jsonify(action=action, queues=queues)
    if action == "resume":
        for queue in queues:
            control.resume(redis, queue)
        return jsonify(action=action, queues=queues)
    if action == "retry-failed":
        ids = body.get("jobIds")
        if ids is not None and (not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)):
            raise ApiError(400, "invalid_request", "jobIds must be a list of job ids")
        requeued = {queue: control.retry_failed(redis, queue, ids) for queue in queues}
        return jsonify(action=action, requeued={q: len(ids) for q, ids in requeued.items()})
    if action == "clean":
        if "state" in body and "status" in body and body["state"] != body["status"]:
            raise ApiError(400, "invalid_request", "give the jobs' status once: 'status' (or its older name 'state')")
        state = body.get("status", body.get("state", "completed"))
        grace, limit = body.get("grace", 0), body.get("limit")
        if isinstance(grace, bool) or not isinstance(grace, int | float) or grace < 0:
            raise ApiError(400, "invalid_request", "grace must be a number of seconds >= 0")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ApiError(400, "invalid_request", "limit must be a whole number >= 1")
        removed = {queue: control.clean(redis, queue, state, grace, limit) for queue in queues}
        return jsonify(action=action, status=state, removed=removed)
    if action == "setup-recurring":
        settings = current_app.config["SETTINGS"]
        try:
            entries = load_schedules(settings.schedules_file, settings.timezone)
        except ScheduleError as exc:
            raise ApiError(400, "invalid_schedules", str(exc)) from None
        sync_declared(get_db(), entries)
        return jsonify(action=action, schedules=[entry.id for entry in entries])
    raise ApiError(400, "unknown_action", f"unknown action {action!r}",
                   {"valid": ["pause", "resume", "retry-failed", "clean", "setup-recurring"]})


@bp.delete("/workers")
def workers_delete():
    """Empty one queue or all (waiting and delayed jobs); outside dev mode `?force=true` is required."""
    if not current_app.config["SETTINGS"].debug and request.args.get("force") != "true":
        raise ApiError(400, "force_required", "emptying queues deletes waiting jobs: add ?force=true")
    queues = _queues(request.args.get("queueName", _ABSENT))
    return jsonify(removed={queue: control.empty(_redis(), queue) for queue in queues})


@bp.get("/jobs/stats")
def jobs_stats():
    """Queue statistics (the same document as `/workers?action=stats`)."""
    return jsonify(queue_stats(_redis()))


@bp.post("/jobs")
def jobs_create():
    """Create a job of a registered task type."""
    return _create_job(json_body())


@bp.post("/batches")
def batches_create():
    """Create a batch: its jobs, and callbacks run once when every job has ended (onComplete) or completed
    (onSuccess)."""
    batch = create_batch(_redis(), **batch_from_json(json_body()))
    return jsonify(batchId=batch.id, jobIds=batch.job_ids, callbacks=batch.callbacks), 201


@bp.get("/batches/<batch_id>")
def batch_show(batch_id: str):
    """A batch's counts (total, pending, completed, failed, canceled), state and callbacks."""
    shown = batch_status(_redis(), batch_id)
    if shown is None:
        raise ApiError(404, "batch_not_found",
                       f"no batch {batch_id!r} (never created, or ended over {BATCH_TTL // 86400} days ago)")
    return jsonify(shown)


@bp.get("/groups")
def groups_show():
    """A queue's groups (`queueName`, required): jobs waiting and running per group, and each group's limit."""
    queue = optional("queueName")
    if queue is None:
        raise ApiError(400, "invalid_request", "queueName is required: groups are counted per queue")
    return jsonify(group_stats(_redis(), get_queue_spec(queue).name))


@bp.get("/jobs")
def jobs_list():
    """Jobs in one state (`status`, default waiting), in one queue (`queueName`) or all, a page at a time."""
    raw = request.args.get("status", State.WAITING.value)
    try:
        state = State(raw)
    except ValueError:
        raise ApiError(400, "invalid_request", f"unknown status {raw!r}", {"valid": [s.value for s in State]}) from None
    queue = optional("queueName")
    if queue is not None:
        queue = get_queue_spec(queue).name
    limit, offset = page()
    return jsonify(status=state.value, queue=queue, **list_jobs(_redis(), state, queue, limit, offset))


@bp.get("/jobs/<job_id>")
def job_show(job_id: str):
    """One job: type, queue, status (Bull's names), progress, attempts, result or error."""
    job = fetch_job(job_id, _redis())
    if job is None:
        raise _job_not_found(job_id)
    return jsonify(describe_job(job))


@bp.post("/jobs/<job_id>/cancel")
def job_cancel(job_id: str):
    """Cancel a job: waiting or delayed at once, running through its worker."""
    try:
        outcome = control.cancel(_redis(), job_id)
    except InvalidJobError:
        raise _job_not_found(job_id) from None
    return jsonify(jobId=job_id, outcome=outcome)


@bp.post("/jobs/<job_id>/execute")
def job_execute(job_id: str):
    """Run a job as soon as a worker is free: a delayed one now, a failed or canceled one again (attempts reset)."""
    try:
        outcome = control.run_now(_redis(), job_id)
    except InvalidJobError:
        raise _job_not_found(job_id) from None
    except JobStateError as exc:
        raise ApiError(409, "job_state", str(exc)) from None
    return jsonify(jobId=job_id, outcome=outcome)


@bp.get("/jobs/<job_id>/logs")
def job_logs(job_id: str):
    """The job's runs from the history, one per attempt, newest first (they outlive the job in Redis)."""
    limit, offset = page()
    runs = list_runs(get_db(), RunFilter(job_id=job_id), limit, offset)
    if not runs["runs"] and offset == 0 and fetch_job(job_id, _redis()) is None:
        raise ApiError(404, "job_not_found", f"no job {job_id!r} and no run of it in the history")
    return jsonify(jobId=job_id, **runs)
