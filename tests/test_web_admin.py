"""The admin API on the real Redis and PostgreSQL: auth, SPEC's shapes, controls, job creation, JSON errors."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import time

import psycopg
import pytest

import tests.handlers  # noqa: F401 - registers the semantics.* task types the in-process workers run
from app.runtime.enqueue import enqueue
from app.runtime.worker import build_worker
from app.store.migrate import apply_migrations
from app.tasks import queue_keys
from queues import queue_names
from tests.conftest import TOKEN
from tests.test_history import _drain

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def api(client, database_url):
    apply_migrations(database_url)
    return client


def _error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code, body
    return body["error"]


@pytest.mark.parametrize(
    "method, path",
    [("get", "/api/admin/workers?action=stats"), ("post", "/api/admin/workers"), ("delete", "/api/admin/workers"),
     ("get", "/api/admin/jobs/stats"), ("post", "/api/admin/jobs"), ("get", "/api/admin/jobs/x"),
     ("post", "/api/admin/jobs/x/cancel"), ("get", "/api/admin/jobs"), ("post", "/api/admin/jobs/x/execute"),
     ("get", "/api/admin/jobs/x/logs")],
)  # fmt: skip
def test_every_admin_route_refuses_a_missing_or_wrong_token(api, method, path):
    for headers in ({}, {"Authorization": "Bearer wrong-token-0000000000"}, {"Authorization": TOKEN},
                    {"Authorization": f"Basic {TOKEN}"}):  # fmt: skip
        _error(getattr(api, method)(path, headers=headers, json={"action": "pause"}), 401, "unauthorized")


def test_stats_have_spec_shape(api):
    body = api.get("/api/admin/workers?action=stats", headers=AUTH).get_json()
    assert set(body["queues"]) == set(queue_names()) and isinstance(body["workers"], int)
    for queue in body["queues"].values():
        assert {"waiting", "active", "delayed", "completed", "failed", "paused", "workers"} <= set(queue)
    assert api.get("/api/admin/jobs/stats", headers=AUTH).get_json()["queues"].keys() == body["queues"].keys()


def test_create_a_job_run_it_and_read_it_back(api, redis_conn):
    created = api.post("/api/admin/workers", headers=AUTH,
                       json={"type": "system.ping", "data": {"echo": "pong"}, "options": {"queue": "sync"}})
    assert created.status_code == 201
    job = created.get_json()
    assert (job["queue"], job["type"]) == ("sync", "system.ping")
    waiting = api.get(f"/api/admin/jobs/{job['jobId']}", headers=AUTH).get_json()
    assert waiting["status"] == "waiting" and waiting["attempts"] == 3

    build_worker(["sync"], redis_conn, "api-test").work(burst=True)
    done = api.get(f"/api/admin/jobs/{job['jobId']}", headers=AUTH).get_json()
    assert (done["status"], done["result"], done["error"], done["type"]) == ("completed", "pong", None, "system.ping")


def test_dedup_answers_200_with_the_first_job(api):
    body = {"type": "system.ping", "options": {"queue": "harvest", "jobId": "nightly-1"}}
    first = api.post("/api/admin/jobs", headers=AUTH, json=body)
    second = api.post("/api/admin/jobs", headers=AUTH, json=body)
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.get_json()["jobId"] == second.get_json()["jobId"]


def test_pause_resume_and_empty(api, redis_conn):
    paused = api.post("/api/admin/workers", headers=AUTH, json={"action": "pause", "queueName": "reports"})
    assert paused.get_json() == {"action": "pause", "queues": ["reports"]}
    stats = api.get("/api/admin/workers?action=stats", headers=AUTH).get_json()["queues"]
    assert stats["reports"]["paused"] and not stats["sync"]["paused"]
    api.post("/api/admin/workers", headers=AUTH, json={"action": "resume"})  # all queues
    assert not redis_conn.exists(queue_keys("reports").paused)

    for _ in range(3):
        api.post("/api/admin/jobs", headers=AUTH, json={"type": "system.ping", "options": {"queue": "reports"}})
    _error(api.delete("/api/admin/workers?queueName=reports", headers=AUTH), 400, "force_required")
    emptied = api.delete("/api/admin/workers?queueName=reports&force=true", headers=AUTH).get_json()
    assert emptied == {"removed": {"reports": 3}}


def test_retry_failed_and_clean(api, redis_conn):
    job = api.post("/api/admin/jobs", headers=AUTH, json={"type": "system.ping", "data": {"sleep": 2},
                                                          "options": {"queue": "harvest", "timeout": 1,
                                                                      "attempts": 1}}).get_json()  # fmt: skip
    build_worker(["harvest"], redis_conn, "api-test").work(burst=True)
    assert api.get(f"/api/admin/jobs/{job['jobId']}", headers=AUTH).get_json()["status"] == "failed"
    retried = api.post("/api/admin/workers", headers=AUTH, json={"action": "retry-failed", "queueName": "harvest"})
    assert retried.get_json()["requeued"] == {"harvest": 1}
    assert api.get(f"/api/admin/jobs/{job['jobId']}", headers=AUTH).get_json()["status"] == "waiting"

    build_worker(["harvest"], redis_conn, "api-test").work(burst=True)  # fails again
    assert redis_conn.zcard(queue_keys("harvest").failed) == 1
    kept = api.post("/api/admin/workers", headers=AUTH, json={"action": "clean", "state": "failed", "grace": 3600})
    assert kept.get_json()["removed"] == dict.fromkeys(queue_names(), 0)  # younger than an hour
    assert redis_conn.zcard(queue_keys("harvest").failed) == 1
    cleaned = api.post("/api/admin/workers", headers=AUTH, json={"action": "clean", "state": "failed", "grace": 0})
    assert cleaned.status_code == 200
    assert cleaned.get_json()["removed"] == {**dict.fromkeys(queue_names(), 0), "harvest": 1}
    assert redis_conn.zcard(queue_keys("harvest").failed) == 0 and not redis_conn.exists(f"rq:job:{job['jobId']}")
    _error(api.get(f"/api/admin/jobs/{job['jobId']}", headers=AUTH), 404, "job_not_found")


def test_cancel_and_health(api):
    job = api.post("/api/admin/jobs", headers=AUTH, json={"type": "system.ping", "options": {"queue": "sync"}})
    job_id = job.get_json()["jobId"]
    assert api.post(f"/api/admin/jobs/{job_id}/cancel", headers=AUTH).get_json()["outcome"] == "canceled"
    assert api.get(f"/api/admin/jobs/{job_id}", headers=AUTH).get_json()["status"] == "canceled"
    _error(api.post("/api/admin/jobs/nope/cancel", headers=AUTH), 404, "job_not_found")

    health = api.get("/api/admin/workers?action=health-check", headers=AUTH)
    assert health.status_code == 200
    body = health.get_json()
    assert body["status"] == "degraded" and "sync: no worker" in body["problems"]  # no worker runs in this test
    detailed = api.get("/api/admin/workers?action=detailed-stats", headers=AUTH).get_json()
    assert "queues" in detailed and detailed["health"]["status"] == "degraded"


@pytest.mark.parametrize(
    "method, path, body, status, code",
    [
        ("post", "/api/admin/workers", b"{not json", 400, "invalid_json"),
        ("post", "/api/admin/workers", b"[1, 2]", 400, "invalid_json"),
        ("post", "/api/admin/workers", {"action": "explode"}, 400, "unknown_action"),
        ("post", "/api/admin/workers", {"action": "pause", "queueName": "nope"}, 400, "unknown_queue"),
        ("post", "/api/admin/workers", {"type": "os.system", "data": {}}, 400, "unknown_task"),
        ("post", "/api/admin/jobs", {"type": "system.ping", "data": {"sleep": 999}, "options": {"queue": "sync"}},
         400, "invalid_request"),
        ("post", "/api/admin/jobs", {"type": "system.ping", "options": {"priority": "urgent", "queue": "sync"}},
         400, "invalid_request"),
        ("post", "/api/admin/jobs", {"type": "system.ping", "colour": "red"}, 400, "invalid_request"),
        ("post", "/api/admin/workers", {"action": "clean", "grace": -1}, 400, "invalid_request"),
        ("get", "/api/admin/workers?action=explode", None, 400, "unknown_action"),
        ("get", "/api/admin/jobs/does-not-exist", None, 404, "job_not_found"),
        ("get", "/api/admin/nothing-here", None, 404, "not_found"),
        ("put", "/api/admin/workers", None, 405, "method_not_allowed"),
    ],
)  # fmt: skip
def test_bad_input_is_a_4xx_json_error_and_nothing_is_created(api, redis_conn, method, path, body, status, code):
    kwargs = {"data": body, "content_type": "application/json"} if isinstance(body, bytes) else {"json": body}
    _error(getattr(api, method)(path, headers=AUTH, **kwargs), status, code)
    assert redis_conn.keys("rq:job:*") == []


def test_redis_down_is_a_503_json_error(app, client):
    from app.connections import redis_from_url
    from app.local.servers import free_port

    app.extensions["bullrq.redis"] = redis_from_url(f"redis://127.0.0.1:{free_port()}/0")
    _error(client.get("/api/admin/workers?action=stats", headers=AUTH), 503, "redis_unavailable")
    health = client.get("/api/admin/workers?action=health-check", headers=AUTH)
    assert health.status_code == 503 and health.get_json()["status"] == "unhealthy"


def test_postgres_down_is_a_503_json_error_and_redis_controls_still_work(app, client, redis_conn):
    from app.local.servers import free_port

    app.config["DATABASE_URL"] = f"postgresql://127.0.0.1:{free_port()}/nothing"
    app.config["DATABASE_POOL_TIMEOUT"] = 1
    app.extensions.pop("bullrq.db", None)
    for path in ("/api/admin/jobs/logs", "/api/admin/jobs/schedules", "/api/admin/jobs/x/logs",
                 "/api/admin/jobs/history-stats"):  # fmt: skip
        error = _error(client.get(path, headers=AUTH), 503, "postgres_unavailable")
        assert "PostgreSQL" in error["message"]
    # queue controls live in Redis: they still work, and the lost audit row does not undo them
    paused = client.post("/api/admin/workers", headers=AUTH, json={"action": "pause", "queueName": "harvest"})
    assert paused.status_code == 200 and redis_conn.exists(queue_keys("harvest").paused)


def _ping(api, queue: str, **options) -> str:
    body = {"type": "system.ping", "options": {"queue": queue, **options}}
    return api.post("/api/admin/jobs", headers=AUTH, json=body).get_json()["jobId"]


def test_list_jobs_by_state_and_queue_a_page_at_a_time(api, redis_conn):
    waiting = [_ping(api, "harvest") for _ in range(5)]
    urgent = _ping(api, "harvest", priority="high")
    other = _ping(api, "sync")
    delayed = _ping(api, "harvest", delay=3600)

    page = api.get("/api/admin/jobs?status=waiting&queueName=harvest&limit=4", headers=AUTH).get_json()
    assert page["total"] == 6 and [j["id"] for j in page["jobs"]] == [urgent, *waiting[:3]]  # the order they run in
    rest = api.get("/api/admin/jobs?status=waiting&queueName=harvest&limit=4&offset=4", headers=AUTH).get_json()
    assert [j["id"] for j in rest["jobs"]] == waiting[3:]
    every = api.get("/api/admin/jobs?limit=100", headers=AUTH).get_json()  # waiting is the default, all queues
    assert every["total"] == 7 and other in [j["id"] for j in every["jobs"]]
    later = api.get("/api/admin/jobs?status=delayed", headers=AUTH).get_json()
    assert [(j["id"], j["status"]) for j in later["jobs"]] == [(delayed, "delayed")]
    _error(api.get("/api/admin/jobs?status=sleeping", headers=AUTH), 400, "invalid_request")
    _error(api.get("/api/admin/jobs?queueName=nope", headers=AUTH), 400, "unknown_queue")
    _error(api.get("/api/admin/jobs?limit=1000", headers=AUTH), 400, "invalid_request")


def test_execute_runs_a_delayed_job_now_and_a_failed_one_again(api, redis_conn, database_url, monkeypatch):
    delayed = _ping(api, "harvest", delay=3600)
    assert api.post(f"/api/admin/jobs/{delayed}/execute", headers=AUTH).get_json()["outcome"] == "promoted"
    failing = api.post("/api/admin/jobs", headers=AUTH, json={
        "type": "system.ping", "data": {"sleep": 2}, "options": {"queue": "harvest", "timeout": 1, "attempts": 1},
    }).get_json()["jobId"]  # fmt: skip
    monkeypatch.setenv("DATABASE_URL", database_url)
    build_worker(["harvest"], redis_conn, "execute-test", database_url).work(burst=True)
    assert api.get(f"/api/admin/jobs/{delayed}", headers=AUTH).get_json()["status"] == "completed"
    assert api.get(f"/api/admin/jobs/{failing}", headers=AUTH).get_json()["status"] == "failed"

    assert api.post(f"/api/admin/jobs/{failing}/execute", headers=AUTH).get_json()["outcome"] == "requeued"
    assert api.get(f"/api/admin/jobs/{failing}", headers=AUTH).get_json()["status"] == "waiting"
    conflict = _error(api.post(f"/api/admin/jobs/{delayed}/execute", headers=AUTH), 409, "job_state")
    assert "completed" in conflict["message"]
    _error(api.post("/api/admin/jobs/nope/execute", headers=AUTH), 404, "job_not_found")

    build_worker(["harvest"], redis_conn, "execute-test-2", database_url).work(burst=True)
    _drain(redis_conn, database_url)
    logs = api.get(f"/api/admin/jobs/{failing}/logs", headers=AUTH).get_json()
    assert logs["jobId"] == failing
    # the retry numbers its try after the first instead of writing over its row
    assert [(r["attempt"], r["status"]) for r in logs["runs"]] == [(2, "timed_out"), (1, "timed_out")]
    assert api.get(f"/api/admin/jobs/{failing}", headers=AUTH).get_json()["attempt"] == 2
    _error(api.get("/api/admin/jobs/nope/logs", headers=AUTH), 404, "job_not_found")


SCHEDULES = """
schedules:
  - id: nightly
    task: system.ping
    queue: harvest
    cron: "0 3 * * *"
    args: {echo: night}
"""


def test_schedules_over_http(api, app, tmp_path, redis_conn, database_url):
    path = tmp_path / "schedules.yaml"
    path.write_text(SCHEDULES)
    app.config["SETTINGS"] = dataclasses.replace(app.config["SETTINGS"], schedules_file=path)
    setup = api.post("/api/admin/workers", headers=AUTH, json={"action": "setup-recurring"})
    assert setup.get_json() == {"action": "setup-recurring", "schedules": ["nightly"]}

    [entry] = api.get("/api/admin/jobs/schedules", headers=AUTH).get_json()["schedules"]
    assert (entry["id"], entry["effective_cron"], entry["effective_enabled"]) == ("nightly", "0 3 * * *", True)
    patched = api.patch("/api/admin/jobs/schedules/nightly", headers=AUTH,
                        json={"cron_expression": "30 4 * * *", "timezone": "Europe/Lisbon", "is_active": False})
    assert patched.status_code == 200
    assert (patched.get_json()["effective_cron"], patched.get_json()["effective_enabled"]) == ("30 4 * * *", False)
    _error(api.patch("/api/admin/jobs/schedules/nightly", headers=AUTH, json={"cron_expression": "99 * * * *"}),
           400, "invalid_request")
    _error(api.patch("/api/admin/jobs/schedules/nightly", headers=AUTH, json={"timezone": "Mars/Base"}),
           400, "invalid_request")
    _error(api.get("/api/admin/jobs/schedules/nope", headers=AUTH), 404, "schedule_not_found")

    run = api.post("/api/admin/jobs/schedules/nightly/run", headers=AUTH)
    assert run.status_code == 201
    _error(api.post("/api/admin/jobs/schedules/nightly/run", headers=AUTH), 409, "already_running")
    build_worker(["harvest"], redis_conn, "api-sched", database_url).work(burst=True)
    from app.store.history import HistoryWriter

    writer = HistoryWriter(redis_conn, database_url, "api-test")
    while writer.drain_once(block=0.05):
        pass
    history = api.get("/api/admin/jobs/schedules/nightly/history", headers=AUTH).get_json()
    assert [(r["status"], r["schedule_id"]) for r in history["runs"]] == [("completed", "nightly")]
    assert api.get("/api/admin/jobs/logs?jobName=nightly&limit=5", headers=AUTH).get_json()["runs"][0]["status"] == (
        "completed"
    )
    latest = api.get("/api/admin/jobs/logs/system.ping/latest", headers=AUTH).get_json()
    assert latest["job_id"] == run.get_json()["jobId"]
    _error(api.get("/api/admin/jobs/logs?limit=500", headers=AUTH), 400, "invalid_request")
    for huge in (2**62 + 1, 2**63):  # past PostgreSQL's bigint once the limit is added: refused, not a 500
        _error(api.get(f"/api/admin/jobs/logs?offset={huge}", headers=AUTH), 400, "invalid_request")
        history = api.get(f"/api/admin/jobs/schedules/nightly/history?offset={huge}", headers=AUTH)
        _error(history, 400, "invalid_request")
    assert api.get(f"/api/admin/jobs/logs?offset={2**62}", headers=AUTH).get_json()["runs"] == []
    status = api.get("/api/admin/jobs/status", headers=AUTH).get_json()["schedules"]
    assert status[0]["latest_run"]["status"] == "completed" and status[0]["total_runs"] == 1
    # nothing refreshes the entry's state here (no scheduler runs): it still holds its first job, and a run now
    # is refused until the reset frees it
    _error(api.post("/api/admin/jobs/schedules/nightly/run", headers=AUTH), 409, "already_running")
    reset = api.post("/api/admin/jobs/schedules/nightly/reset", headers=AUTH)
    assert reset.status_code == 200, reset.get_json()
    shown = api.get("/api/admin/jobs/schedules/nightly", headers=AUTH).get_json()
    assert shown["current_job_id"] is None and shown["last_error"] == "reset by an operator", shown
    freed = api.post("/api/admin/jobs/schedules/nightly/run", headers=AUTH)  # the reset freed the entry
    assert freed.status_code == 201 and freed.get_json()["jobId"] != run.get_json()["jobId"]


def test_state_changes_are_audited_without_the_token(api, database_url):
    api.post("/api/admin/workers", headers=AUTH, json={"action": "pause", "queueName": "sync"})
    api.post("/api/admin/workers", headers={"Authorization": "Bearer wrong-token-000000000"}, json={"action": "resume"})
    api.get("/api/admin/workers?action=stats", headers=AUTH)  # reads are not audited
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT actor, method, path, status, request FROM audit_log ORDER BY id").fetchall()
    assert [(r[1], r[2], r[3]) for r in rows] == [("POST", "/api/admin/workers", 200),
                                                  ("POST", "/api/admin/workers", 401)]
    assert rows[0][4] == {"action": "pause", "queueName": "sync"} and rows[0][0].startswith("token:")
    assert rows[0][0] != rows[1][0] and all(TOKEN not in str(row) for row in rows)


def test_a_nul_in_a_body_is_still_audited(api, database_url):
    escaped = '{"type": "system.ping", "data": {"echo": "a\\u0000b"}, "options": {"queue": "sync"}}'
    api.post("/api/admin/workers", headers={**AUTH, "Content-Type": "application/json"}, data=escaped)
    api.post("/api/admin/workers", headers={**AUTH, "Content-Type": "text/plain"}, data=b"raw\x00nul")
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT status, request FROM audit_log ORDER BY id").fetchall()
    assert rows == [
        (201, {"type": "system.ping", "data": {"echo": "a\ufffdb"}, "options": {"queue": "sync"}}),
        (415, {"text": "raw\ufffdnul"}),
    ]


def _scrape(api) -> tuple[str, dict]:
    """/metrics as text, and its families as prometheus_client's parser reads them ({name: family})."""
    from prometheus_client.parser import text_string_to_metric_families

    response = api.get("/metrics", headers=AUTH)
    assert response.status_code == 200 and response.mimetype == "text/plain"
    text = response.get_data(as_text=True)
    return text, {family.name: family for family in text_string_to_metric_families(text)}


def _value(family, **labels) -> float:
    [value] = [s.value for s in family.samples if s.labels == labels]
    return value


def test_metrics_read_by_prometheus_client_and_promtool(api, redis_conn, database_url, tmp_path):
    from app.store.history import write_rows
    from app.store.rows import run_row

    for n in range(4):
        api.post("/api/admin/jobs", headers=AUTH, json={"type": "system.ping", "data": {"echo": n},
                                                        "options": {"queue": "reports"}})  # fmt: skip
    job = enqueue(redis_conn, "semantics.fail", {"tag": "twice"}, {"queue": "harvest", "attempts": 1})
    build_worker(["reports", "harvest"], redis_conn, "metrics-test", database_url).work(burst=True)
    # rq-dashboard's requeue puts the failed job back; its rerun is a second run, counted as one
    assert api.post(f"/api/admin/queues/job/{job.id}/requeue", headers=AUTH).status_code == 200
    build_worker(["harvest"], redis_conn, "metrics-test-2", database_url).work(burst=True)
    with psycopg.connect(database_url) as conn:  # a completed run from three days ago: still in the totals
        three_days_ago = time.time() - 3 * 86400
        write_rows(conn, [run_row(job_id="old", attempt=1, queue="reports", task="system.ping", status="completed",
                                  started_at=three_days_ago, ended_at=three_days_ago + 0.002)])
    _drain(redis_conn, database_url)
    waiting = api.post("/api/admin/jobs", headers=AUTH, json={"type": "system.ping", "options": {"queue": "reports"}})
    api.post("/api/admin/jobs", headers=AUTH, json={"type": "system.ping", "options": {
        "queue": "reports", "dependsOn": [waiting.get_json()["jobId"]]}})  # deferred: waits for the one before

    _error(api.get("/metrics"), 401, "unauthorized")
    text, families = _scrape(api)
    always = {"bullrq_queue_jobs", "bullrq_queue_paused", "bullrq_queue_workers", "bullrq_jobs_processed",
              "bullrq_jobs_failed", "bullrq_job_duration_seconds", "bullrq_redis_memory_bytes", "bullrq_scheduler_up",
              "bullrq_alerts_open"}
    when_any = {"bullrq_scheduler_last_tick_age_seconds", "bullrq_process_restarts", "bullrq_alert_open"}
    assert set(families) == always | when_any  # every family typed: no "unknown"
    assert all(family.type != "unknown" for family in families.values())
    assert all(families[name].samples for name in always)  # no scheduler, restart or open alert here
    assert _value(families["bullrq_queue_jobs"], queue="reports", state="waiting") == 1
    assert _value(families["bullrq_queue_jobs"], queue="reports", state="completed") == 4
    assert _value(families["bullrq_queue_jobs"], queue="reports", state="deferred") == 1
    states = {"waiting", "active", "delayed", "deferred", "completed", "failed", "canceled"}
    assert {(s.labels["queue"], s.labels["state"]) for s in families["bullrq_queue_jobs"].samples} == {
        (queue, state) for queue in queue_names() for state in states}  # every state of every queue, 0 or not
    processed, failed = families["bullrq_jobs_processed"], families["bullrq_jobs_failed"]
    assert processed.type == failed.type == "counter"
    assert _value(processed, queue="reports", task="system.ping") == 5
    assert _value(failed, queue="reports", task="system.ping") == 0
    assert _value(processed, queue="harvest", task="semantics.fail") == 2  # ran twice: requeued once
    assert _value(failed, queue="harvest", task="semantics.fail") == 2

    durations = families["bullrq_job_duration_seconds"]
    assert durations.type == "histogram"
    buckets = [(float(s.labels["le"]), s.value) for s in durations.samples
               if s.name.endswith("_bucket") and s.labels["queue"] == "reports"]
    assert buckets == sorted(buckets) and buckets[-1] == (float("inf"), 5)  # cumulative, the old run included
    assert [s.value for s in durations.samples if s.name.endswith("_count") and s.labels["queue"] == "reports"] == [5]
    assert _value(families["bullrq_redis_memory_bytes"]) > 0

    promtool = shutil.which("promtool")
    if promtool:  # Debian's prometheus package; the parser above is the check where it is not installed
        checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_openapi_document_describes_every_admin_route(app, client):
    document = client.get("/api/admin/openapi.json", headers=AUTH).get_json()
    assert document["openapi"].startswith("3.")
    documented = {(path, method.upper()) for path, item in document["paths"].items() for method in item}
    served = set()
    for rule in app.url_map.iter_rules():
        ours = rule.rule.startswith("/api/admin") or rule.rule == "/metrics"
        if not ours or rule.rule.startswith("/api/admin/queues"):  # rq-dashboard documents itself
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        served |= {(path, method) for method in rule.methods - {"HEAD", "OPTIONS"}}
    assert served == documented
    # a job id is never the name of a route beside /jobs/{job_id} (a fuzzer's "status" would get another answer)
    siblings = {path.split("/")[4] for path, _ in served if path.startswith("/api/admin/jobs/") and "{" not in
                path.split("/")[4]}  # fmt: skip
    job_id = re.compile(document["components"]["parameters"]["JobId"]["schema"]["pattern"])
    assert siblings and not any(job_id.match(name) for name in siblings)
    assert job_id.match("0b7e0f3e-4c39-4b7a-9a5e-2f8d6c1e9a10") and job_id.match("statuses")


def test_text_no_store_can_hold_is_a_400_not_a_500(api):
    for path in ("/api/admin/jobs/history-stats?queue=a%00b", "/api/admin/jobs/logs?jobName=x%00y",
                 "/api/admin/jobs/logs?error=%00", "/api/admin/jobs/history-stats?queue=nowhere"):  # fmt: skip
        response = api.get(path, headers=AUTH)
        assert response.status_code == 400, (path, response.get_data(as_text=True))


@pytest.fixture
def evicting_redis(redis_conn):
    """The test's Redis with an LRU eviction policy (as many hosted Redis have by default), restored afterwards."""
    redis_conn.config_set("maxmemory-policy", "allkeys-lru")
    yield redis_conn
    redis_conn.config_set("maxmemory-policy", "noeviction")


def test_health_check_reports_a_redis_that_may_evict_keys(api, evicting_redis):
    body = api.get("/api/admin/workers?action=health-check", headers=AUTH).get_json()
    assert body["status"] == "degraded" and body["checks"]["redis"]["maxmemory_policy"] == "allkeys-lru"
    assert any("maxmemory-policy is allkeys-lru" in problem for problem in body["problems"])
    evicting_redis.config_set("maxmemory-policy", "noeviction")
    body = api.get("/api/admin/workers?action=health-check", headers=AUTH).get_json()
    assert not any("maxmemory-policy" in problem for problem in body["problems"])


def test_history_stats_returns_the_figures_of_the_runs_in_the_window(api, database_url):
    from app.store.history import write_rows
    from app.store.rows import run_row

    now = time.time()

    def row(job_id, queue, status, ms, hours_ago=0.0):
        start = now - hours_ago * 3600 - 60
        return run_row(job_id=job_id, attempt=1, queue=queue, task="system.ping", status=status,
                       started_at=start, ended_at=start + ms / 1000)  # fmt: skip

    rows = [row(f"s{n}", "sync", "completed", ms) for n, ms in enumerate((100, 200, 300, 400))]
    rows += [row("s-failed", "sync", "failed", 50), row("s-timed-out", "sync", "timed_out", 60)]
    rows += [row(f"h{n}", "harvest", "completed", 1000) for n in range(2)]
    rows += [row("old", "sync", "failed", 10, hours_ago=30)]  # outside a 24-hour window
    with psycopg.connect(database_url, autocommit=True) as conn:
        write_rows(conn, rows)

    body = api.get("/api/admin/jobs/history-stats?hours=24", headers=AUTH).get_json()
    assert body["hours"] == 24
    rates = {r["queue"]: (r["total"], r["failed"], r["rate"]) for r in body["failure_rate"]}
    assert rates == {"sync": (6, 2, round(2 / 6, 4)), "harvest": (2, 0, 0.0)}
    per_queue = {}
    for r in body["throughput"]:
        done = per_queue.setdefault(r["queue"], [0, 0, 0])
        done[0], done[1], done[2] = done[0] + r["completed"], done[1] + r["failed"], done[2] + r["total"]
    assert per_queue == {"sync": [4, 2, 6], "harvest": [2, 0, 2]}
    durations = {r["queue"]: r for r in body["durations"]}
    assert durations["sync"]["runs"] == 4 and durations["sync"]["mean"] == pytest.approx(250, rel=1e-3)  # completed
    assert durations["sync"]["p50"] == pytest.approx(250, rel=0.25)  # between the 2nd and 3rd of 4
    assert durations["sync"]["p99"] == pytest.approx(400, rel=0.09)
    assert durations["harvest"]["p50"] == pytest.approx(1000, rel=0.09)

    wider = api.get("/api/admin/jobs/history-stats?hours=48&queue=sync", headers=AUTH).get_json()
    assert [(r["queue"], r["total"], r["failed"]) for r in wider["failure_rate"]] == [("sync", 7, 3)]
    assert {r["queue"] for r in wider["throughput"]} == {"sync"}


def test_unknown_query_parameters_are_refused_naming_the_accepted_ones(api, app):
    error = _error(api.get("/api/admin/jobs?state=completed&queue=sync", headers=AUTH), 400, "invalid_request")
    assert error["details"] == {"unknown": ["queue", "state"], "accepted": ["status", "queueName", "limit", "offset"]}
    assert "'queue', 'state'" in error["message"] and "status, queueName, limit, offset" in error["message"]
    page = api.get("/api/admin/jobs?status=completed&queueName=sync", headers=AUTH).get_json()
    assert (page["status"], page["queue"]) == ("completed", "sync")

    # every route of the API, whatever its method: the parameters come from the OpenAPI document, nothing else
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/admin") or rule.rule.startswith("/api/admin/queues"):
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", "x", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            response = api.open(path + "?bogus=1", method=method, headers=AUTH, json={})
            error = _error(response, 400, "invalid_request")
            assert error["details"]["unknown"] == ["bogus"], (method, path)


def test_control_actions_refuse_unknown_fields_and_clean_takes_status(api, redis_conn):
    error = _error(api.post("/api/admin/workers", headers=AUTH, json={"action": "clean", "stat": "failed"}), 400,
                   "invalid_request")
    assert "'stat'" in error["message"] and "status" in error["details"]["accepted"]
    cleaned = api.post("/api/admin/workers", headers=AUTH, json={"action": "clean", "status": "failed"})
    assert cleaned.status_code == 200 and cleaned.get_json()["status"] == "failed"
    older = api.post("/api/admin/workers", headers=AUTH, json={"action": "clean", "state": "canceled"})
    assert older.status_code == 200 and older.get_json()["status"] == "canceled"


def test_seed_job_names_create_jobs_of_our_types_and_messages_use_the_names_users_write(api):
    created = api.post("/api/admin/workers", headers=AUTH, json={"type": "sync-manual", "data": {"workspaceId": "w"}})
    assert created.status_code == 201 and created.get_json()["type"] == "sync.manual"
    job = api.get(f"/api/admin/jobs/{created.get_json()['jobId']}", headers=AUTH).get_json()
    assert (job["type"], job["queue"], job["data"]) == ("sync.manual", "sync", {"workspace_id": "w"})
    report = api.post("/api/admin/jobs", headers=AUTH, json={"type": "generate-report", "data": {"scheduleId": "s"}})
    assert report.status_code == 201 and report.get_json()["type"] == "reports.generate"

    error = _error(api.post("/api/admin/jobs", headers=AUTH, json={"type": "sync-manual", "data": {}}), 400,
                   "invalid_request")
    assert "missing 'workspaceId'" in error["message"] and "workspace_id" not in error["message"]
