"""rq-dashboard, mounted at /api/admin/queues behind the admin login, showing bullrq's truth and acting through
bullrq's own controls.

rq-dashboard 0.9 keeps its pages and scripts; every one of its views is replaced by one of ours (same endpoint
names, same JSON shapes), because its own would, on our data:
- count only `rq:queue:<q>` (normal priority) and list only queues that once had a job;
- fail with a 500 on an idle worker (`current_job` empty), a missing job, an unknown registry or a bad page size;
- act with RQ's semantics: requeue as attempt 1 over the history row, empty only the normal lane, delete without
  freeing the dedup key, fetch jobs with pickle.
Here every count comes from `app.runtime.stats.queue_stats` (what `bullrq queues stats` shows), lists span every
priority lane, reads never run RQ's registry cleanup, and every action is a control of `app.runtime.control` or is
refused with a JSON error. Jobs are read with the JSON serializer only.

rq-dashboard puts most fields into its pages unescaped (underscore's `<%= %>`: a stored XSS, open in its
tracker), and a few through its own escaping (`<%- %>`, jQuery's `.text()`). Each JSON answer escapes exactly the
fields the page does not, so job data shows as text, once, never as markup.

It reads Redis through the app's own client (`bullrq.redis`): left alone, rq-dashboard builds a new client, with a
new connection pool, on every request, and knows none of bullrq's timeouts.
"""

from __future__ import annotations

import html
import json
import zlib
from math import ceil

import rq_dashboard
import rq_dashboard.web
from flask import Flask, current_app, jsonify, make_response, render_template, request, url_for
from redis.exceptions import RedisError
from rq import VERSION as RQ_VERSION
from rq.exceptions import DeserializationError
from rq.queue import Queue
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.worker import Worker
from rq_dashboard.version import VERSION as DASHBOARD_VERSION
from rq_dashboard.web import config as dashboard_config
from rq_dashboard.web import escape_format_instance_list, pagination_window, serialize_date, setup_rq_connection

from app.config import redact
from app.errors import InvalidJobError, JobStateError
from app.runtime import control
from app.runtime.groups import waiting_lists
from app.runtime.jobs import SERIALIZER, BullJob, declare_queues, fetch_job, state_of
from app.runtime.stats import queue_stats
from app.tasks import queue_keys
from app.web.auth import require_login
from app.web.errors import ApiError
from queues import QUEUES, job_key, queue_names

URL_PREFIX = "/api/admin/queues"
#: rq-dashboard's registries, as its pages name them
REGISTRIES = ("queued", "scheduled", "deferred", "started", "finished", "failed", "canceled")
#: the started registry's key prefix (its members are leases)
STARTED_PREFIX = StartedJobRegistry.key_template.format("")
#: most jobs on one page of a list
MAX_PER_PAGE = 100
#: job fields rq-dashboard's job list escapes itself (jQuery's `.text()`): sent as they are
_LIST_RAW = frozenset({"description", "exc_info"})


def init_app(app: Flask) -> None:
    dashboard_config.serializer = JSONSerializer  # anything of rq-dashboard's left would unpickle otherwise
    # only shown (in its navigation bar): the connection is `_app_client`
    app.config.setdefault("RQ_DASHBOARD_REDIS_URL", redact(app.config["REDIS_URL"]))
    app.register_blueprint(rq_dashboard.blueprint, url_prefix=URL_PREFIX)
    for endpoint, view in _VIEWS.items():
        app.view_functions[f"{rq_dashboard.blueprint.name}.{endpoint}"] = view
    # the name its connection code calls, at setup and per request (rq-dashboard is pinned: a test on the
    # Sentinel deployment fails if this stops taking effect, since the URL it is given is redacted)
    rq_dashboard.web.from_url = _app_client
    with app.app_context():
        setup_rq_connection(app)
    try:
        declare_queues(app.extensions["bullrq.redis"])  # `rq info` lists every queue from the first start
    except RedisError:
        pass  # workers declare them too, when they start

    @app.before_request
    def dashboard_login():
        if request.blueprint != rq_dashboard.blueprint.name:
            return None
        refused = require_login()
        if refused is not None:
            return refused
        if (request.view_args or {}).get("instance_number", 0) != 0:  # its own check answers 500
            raise ApiError(404, "not_found", "there is one Redis instance here: 0")
        return None


def _app_client(url: str, **_options) -> tuple[None, object]:
    """Stands in for Redis-Sentinel-Url's `connect`: (no sentinel manager, the app's client)."""
    return None, current_app.extensions["bullrq.redis"]


def _redis():
    return current_app.extensions["bullrq.redis"]


# ------------------------------------------------------------------------------------------------ checks


def _queue(name: str | None) -> str:
    if name not in QUEUES:
        raise ApiError(404, "unknown_queue", f"no queue {name!r}", {"valid": queue_names()})
    return name


def _registry(name: str) -> str:
    if name not in REGISTRIES:
        raise ApiError(404, "unknown_registry", f"no registry {name!r}", {"valid": list(REGISTRIES)})
    return name


def _positive(name: str, value, most: int | None = None) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or (most is not None and number > most):
        bounds = f"1 to {most}" if most else "1 or more"
        raise ApiError(400, "invalid_request", f"{name} must be a whole number from {bounds}, not {value!r}")
    return number


def _order(value: str) -> str:
    if value not in ("asc", "dsc"):
        raise ApiError(400, "invalid_request", f"order must be 'asc' or 'dsc', not {value!r}")
    return value


def _job(job_id: str) -> BullJob:
    job = fetch_job(job_id, _redis())
    if job is None:
        raise ApiError(404, "job_not_found", f"no job {job_id!r}")
    return job


def _escaped(value):
    if isinstance(value, str):
        return html.escape(value)
    if isinstance(value, list):
        return [_escaped(item) for item in value]
    if isinstance(value, dict):
        return {key: _escaped(item) for key, item in value.items()}
    return value


def _json(**payload):
    response = jsonify(**payload)
    response.headers["Cache-Control"] = "no-store"
    return response


# --------------------------------------------------------------------------------------------------- pages


def _page(template: str, **context):
    response = make_response(
        render_template(
            template,
            current_instance=0,
            instance_list=escape_format_instance_list(current_app.config.get("RQ_DASHBOARD_REDIS_URL")),
            rq_url_prefix=url_for(".queues_overview"),
            rq_dashboard_version=DASHBOARD_VERSION,
            rq_version=RQ_VERSION,
            deprecation_options_usage=current_app.config.get("DEPRECATED_OPTIONS", False),
            enable_delete=not current_app.config.get("RQ_DASHBOARD_DISABLE_DELETE"),
            **context,
        )
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def _declared_queues() -> list[Queue]:
    return [Queue(name, connection=_redis(), serializer=SERIALIZER) for name in QUEUES]


def queues_overview(instance_number: int = 0):
    """rq-dashboard's queues page: every declared queue."""
    return _page("rq_dashboard/queues.html", queues=_declared_queues(), active_tab="queues")


def workers_overview(instance_number: int = 0):
    """rq-dashboard's workers page."""
    return _page("rq_dashboard/workers.html", workers=[], active_tab="workers")


def jobs_overview(instance_number, queue_name, registry_name, per_page, order, page):
    """rq-dashboard's page of one registry of one queue (`queued`: every priority lane)."""
    name = _queue(queue_name) if queue_name is not None else queue_names()[0]
    return _page(
        "rq_dashboard/jobs.html",
        queues=_declared_queues(),
        queue=Queue(name, connection=_redis(), serializer=SERIALIZER),
        per_page=_positive("per_page", per_page, MAX_PER_PAGE),
        order=_order(order),
        page=_positive("page", page),
        registry_name=_registry(registry_name),
        active_tab="jobs",
    )


def job_view(instance_number, job_id):
    """rq-dashboard's page of one job."""
    if not _redis().exists(job_key(job_id)):
        raise ApiError(404, "job_not_found", f"no job {job_id!r}")
    return _page("rq_dashboard/job.html", id=job_id)


# ---------------------------------------------------------------------------------------------------- data


def list_queues(instance_number):
    """Every declared queue with bullrq's counts: `count` is every waiting job, of every priority; deferred jobs
    (waiting for their parents or their batch) are RQ's deferred registry."""
    stats = queue_stats(_redis())["queues"]
    rows = []
    for name, counts in stats.items():
        links = {
            f"{registry}_url": url_for(
                ".jobs_overview", instance_number=0, queue_name=name, registry_name=registry, per_page="8",
                order="asc", page="1",
            )
            for registry in REGISTRIES
        }  # fmt: skip
        rows.append({
            "name": f"{name} (paused)" if counts["paused"] else name,
            "count": counts["waiting"],
            "waiting_by_priority": counts["waiting_by_priority"],
            "paused": counts["paused"],
            "scheduled_job_registry_count": counts["delayed"],
            "started_job_registry_count": counts["active"] + counts["abandoned"],
            "finished_job_registry_count": counts["completed"],
            "failed_job_registry_count": counts["failed"],
            "canceled_job_registry_count": counts["canceled"],
            "deferred_job_registry_count": counts["deferred"],
            **links,
        })  # fmt: skip
    return _json(queues=_escaped(rows))


def _sources(queue: str, registry: str) -> list[tuple[str, str]]:
    """Where the jobs of `registry` are, in listing order: ("list" | "zset", key)."""
    keys = queue_keys(queue)
    if registry == "queued":  # priority 1 first, each lane followed by its groups' lists: the order they run in
        return [("list", key) for key in waiting_lists(_redis(), queue)]
    key = {
        "scheduled": keys.scheduled, "started": keys.started, "finished": keys.finished, "failed": keys.failed,
        "canceled": keys.canceled, "deferred": keys.deferred,
    }[registry]  # fmt: skip
    return [("zset", key)]


def _window(sources: list[tuple[str, str]], first: int, stop: int) -> tuple[int, list[str]]:
    """(total, job ids at positions first..stop-1 of the sources end to end), in two round trips, read-only
    (no RQ registry cleanup)."""
    connection = _redis()
    pipe = connection.pipeline(transaction=False)
    for kind, key in sources:
        pipe.llen(key) if kind == "list" else pipe.zcard(key)
    sizes = pipe.execute()
    base = 0
    for (kind, key), size in zip(sources, sizes, strict=True):
        lo, hi = max(first, base), min(stop, base + size)
        if lo < hi:
            (pipe.lrange if kind == "list" else pipe.zrange)(key, lo - base, hi - base - 1)
        base += size
    members = [raw.decode() for reply in pipe.execute() for raw in reply]
    if any(key.startswith(STARTED_PREFIX) for _, key in sources):  # leases: "<job id>:<execution id>"
        members = [member.rsplit(":", 1)[0] for member in members]
    return sum(sizes), members


def _list_entry(job: BullJob) -> dict:
    status = job.get_status(refresh=False)
    exc_info = None
    if status in ("failed", "canceled"):  # only these have the Requeue button
        exc_info = _error_text(job) or status
    entry = {
        "id": job.id,
        "created_at": serialize_date(job.created_at),
        "started_at": serialize_date(job.started_at),
        "ended_at": serialize_date(job.ended_at),
        "exc_info": exc_info,
        "description": job.description,
    }
    return {key: value if key in _LIST_RAW else _escaped(value) for key, value in entry.items()}


def _error_text(job: BullJob) -> str | None:
    """The job's last error: from its results, else from its hash (a recovered job has no result entry)."""
    latest = job.latest_result()
    if latest is not None and latest.exc_string:
        return latest.exc_string
    raw = _redis().hget(job.key, "exc_info")
    if not raw:
        return None
    try:
        raw = zlib.decompress(raw)  # RQ's own writers compress it
    except zlib.error:
        pass
    return raw.decode(errors="replace")


def list_jobs(instance_number, queue_name, registry_name, per_page, order, page):
    """One page of a registry of a queue; `queued` lists every priority lane, the first to run first."""
    queue, registry = _queue(queue_name), _registry(registry_name)
    per_page, current = _positive("per_page", per_page, MAX_PER_PAGE), _positive("page", page)
    order = _order(order)
    offset = (current - 1) * per_page
    sources = _sources(queue, registry)
    total, ids = _window(sources, offset, offset + per_page)
    if order == "dsc":  # newest first: the window counted from the end
        total, ids = _window(sources, max(0, total - offset - per_page), max(0, total - offset))
        ids.reverse()
    jobs = [job for job in BullJob.fetch_many(ids, connection=_redis(), serializer=SERIALIZER) if job is not None]

    def link(number: int) -> str:
        return url_for(".jobs_overview", instance_number=0, queue_name=queue, registry_name=registry,
                       per_page=per_page, order=order, page=number)  # fmt: skip

    last = int(ceil(total / per_page))
    pagination = {
        "current_page": current,
        "num_pages": last,
        "pages_in_window": [{"number": n, "url": link(n)} for n in pagination_window(total, current, per_page)],
        "first_page": {"url": link(1)},
        "last_page": {"url": link(last)},
    }
    if current > 1:
        pagination["prev_page"] = {"url": link(current - 1)}
    if current < last:
        pagination["next_page"] = {"url": link(current + 1)}
    return _json(name=_escaped(queue), registry_name=_escaped(registry), jobs=[_list_entry(job) for job in jobs],
                 pagination=_escaped(pagination))  # fmt: skip


def job_info(instance_number, job_id):
    """One job, with bullrq's state, priority, attempt and batch in its metadata, and the jobs it depends on."""
    job = _job(job_id)
    status = job.get_status(refresh=False)
    try:
        result = job.return_value(refresh=False)
    except DeserializationError:
        result = "(stored result is not JSON)"
    state = state_of(status)
    metadata = {
        "state": state.value if state else None,
        "priority": job.priority,
        "attempt": job.attempt,
        "attempts": job.attempts,
        "progress": job.progress,
        "batch_id": job.batch_id,
    }
    parents = list(job._dependency_ids)
    info = {
        "id": job.id,
        "created_at": serialize_date(job.created_at),
        "enqueued_at": serialize_date(job.enqueued_at),
        "started_at": serialize_date(job.started_at),
        "ended_at": serialize_date(job.ended_at),
        "origin": job.origin,
        "status": status,
        "result": result,
        "exc_info": _error_text(job),
        "description": job.description,
        "metadata": json.dumps(metadata, default=str),
    }
    if parents:  # its page links each parent still in Redis ("active"), and marks the others "(Expired)"
        with _redis().pipeline(transaction=False) as pipe:
            for parent in parents:
                pipe.exists(job_key(parent))
            present = pipe.execute()
        info["depends_on"] = parents
        info["depends_on_status"] = ["active" if found else "expired" for found in present]
    return _json(**_escaped(info))


def list_workers(instance_number):
    """Every registered worker; an idle one (or one whose job is gone) shows "idle", never a 500."""
    connection = _redis()
    rows = []
    for worker in Worker.all(connection=connection, serializer=SERIALIZER):
        current = "idle"
        job_id = worker.get_current_job_id()
        if job_id:
            job = fetch_job(job_id, connection)
            description = job.description if job else "(no longer in Redis)"
            current = {
                "job_id": _escaped(job_id),
                "description": description,  # its page escapes this one itself (`<%- %>`)
                "created_at": serialize_date(job.created_at) if job else None,
                "call_string": _escaped(description),
            }
        row = {
            "name": worker.name,
            "pid": worker.pid,
            "queues": worker.queue_names(),
            "state": str(worker.get_state()),
            "last_heartbeat": serialize_date(worker.last_heartbeat),
            "birth_date": serialize_date(worker.birth_date),
            "successful_job_count": worker.successful_job_count,
            "failed_job_count": worker.failed_job_count,
            "total_working_time": worker.total_working_time,
            "version": getattr(worker, "version", ""),
            "python_version": getattr(worker, "python_version", ""),
        }
        rows.append({**_escaped(row), "current_job": current})
    rows.sort(key=lambda w: (w["state"], w["queues"], w["name"]))
    return _json(workers=rows)


# ------------------------------------------------------------------------------------------------- actions


def _deletes_allowed() -> None:
    if current_app.config.get("RQ_DASHBOARD_DISABLE_DELETE"):
        raise ApiError(403, "disabled", "deleting is switched off here (RQ_DASHBOARD_DISABLE_DELETE)")


def _post_only() -> None:
    if request.method != "POST":  # it changes state: never on a GET, which skips the same-site check
        raise ApiError(405, "method_not_allowed", "this action takes a POST")


def delete_job_view(job_id, registry=None):
    """Delete a job that is not running (bullrq's delete: out of its lane or registry, dedup key freed)."""
    _deletes_allowed()
    _job(job_id)
    try:
        state = control.delete(_redis(), job_id)
    except InvalidJobError:
        raise ApiError(404, "job_not_found", f"no job {job_id!r}") from None
    except JobStateError as exc:
        raise ApiError(409, "job_state", str(exc)) from None
    return _json(status="OK", state=state)


def requeue_job_view(job_id):
    """Requeue a failed or canceled job as bullrq's retry-failed does: its next try numbered after the earlier."""
    job = _job(job_id)
    status = job.get_status(refresh=False)
    state = state_of(status)
    if status not in ("failed", "canceled"):
        raise ApiError(409, "job_state", f"job {job_id!r} is {state.value if state else status}: only failed or "
                                         "canceled jobs can be requeued")  # fmt: skip
    try:
        control.run_now(_redis(), job_id)
    except (InvalidJobError, JobStateError) as exc:  # it moved meanwhile
        raise ApiError(409, "job_state", str(exc)) from None
    return _json(status="OK")


def requeue_all(queue_name):
    """Requeue every failed job of a queue (bullrq's retry-failed)."""
    _post_only()
    requeued = control.retry_failed(_redis(), _queue(queue_name))
    return _json(status="OK", count=len(requeued))


def empty_queue(queue_name, registry_name):
    """Empty one registry of a queue: `queued` deletes the waiting jobs of every lane, `scheduled` the delayed
    ones, `deferred` those waiting for their parents or batch, finished/failed/canceled delete the ended jobs
    (bullrq's clean); running jobs are never deleted."""
    _deletes_allowed()
    queue, registry = _queue(queue_name), _registry(registry_name)
    connection = _redis()
    if registry == "queued":
        count = control.empty(connection, queue, waiting=True, delayed=False)
    elif registry == "scheduled":
        count = control.empty(connection, queue, waiting=False, delayed=True)
    elif registry in ("finished", "failed", "canceled"):
        state = {"finished": "completed"}.get(registry, registry)
        count = control.clean(connection, queue, state, grace=0)
    elif registry == "started":
        raise ApiError(409, "job_state", "running jobs cannot be deleted; cancel them one by one "
                                         "(bullrq jobs cancel ID)")  # fmt: skip
    else:
        count = _empty_deferred(connection, queue)
    return _json(status="OK", count=count)


def _empty_deferred(connection, queue: str) -> int:
    """Delete every deferred job of `queue` with bullrq's delete: each counts as canceled for the jobs that wait
    for it (moved on by their onParentFailure) and for its batch. A job released meanwhile is left alone."""
    registry, count = queue_keys(queue).deferred, 0
    while ids := [raw.decode() for raw in connection.zrange(registry, 0, control.BATCH - 1)]:
        for job_id in ids:
            try:
                if connection.hget(job_key(job_id), "status") == b"deferred":
                    control.delete(connection, job_id)
                    count += 1
                    continue
            except (InvalidJobError, JobStateError):  # released, ended or deleted meanwhile
                pass
            connection.zrem(registry, job_id)  # a stale entry (its job gone or moved on): never listed again
    return count


def compact_queue(queue_name):
    """Drop ids of deleted jobs from every lane of a queue (safe beside running workers)."""
    return _json(status="OK", count=control.compact(_redis(), _queue(queue_name)))


#: rq-dashboard's endpoints and the views that replace its own
_VIEWS = {
    "queues_overview": queues_overview,
    "workers_overview": workers_overview,
    "jobs_overview": jobs_overview,
    "job_view": job_view,
    "list_queues": list_queues,
    "list_jobs": list_jobs,
    "job_info": job_info,
    "list_workers": list_workers,
    "delete_job_view": delete_job_view,
    "requeue_job_view": requeue_job_view,
    "requeue_all": requeue_all,
    "empty_queue": empty_queue,
    "compact_queue": compact_queue,
}
