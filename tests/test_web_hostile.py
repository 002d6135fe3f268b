"""Hostile and unlucky input to the admin API on the real Redis and PostgreSQL: every refusal is a 4xx in the JSON
error shape, never a 5xx; what comes in as JSON is JSON (no NaN, bounded nesting and size); empty strings never
mean "everything"; the audit trail keeps every action that happened."""

from __future__ import annotations

import dataclasses
import json
import logging

import psycopg
import pytest

from app.errors import InvalidJobError, JobDataTooLargeError
from app.runtime.enqueue import enqueue, max_job_data_bytes
from app.store.migrate import apply_migrations
from app.tasks import queue_keys
from queues import queue_names
from tests.conftest import TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {**AUTH, "Content-Type": "application/json"}
SCHEDULES = 'schedules:\n  - id: nightly\n    task: system.ping\n    queue: harvest\n    cron: "0 3 * * *"\n'
DEEP = "[" * 5000 + "]" * 5000


@pytest.fixture
def api(client, app, database_url, tmp_path):
    apply_migrations(database_url)
    path = tmp_path / "schedules.yaml"
    path.write_text(SCHEDULES)
    app.config["SETTINGS"] = dataclasses.replace(app.config["SETTINGS"], schedules_file=path)
    assert client.post("/api/admin/workers", headers=AUTH, json={"action": "setup-recurring"}).status_code == 200
    return client


def _error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True)[:500])
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


def _audit(database_url) -> list[dict]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute("SELECT method, path, status, request FROM audit_log ORDER BY id").fetchall()
    return [{"method": m, "path": p, "status": s, "request": r} for m, p, s, r in rows]


# -------------------------------------------------------------------------------------------------- sizes (2)


def test_a_body_over_the_limit_is_413_json(api, app):
    app.config["MAX_CONTENT_LENGTH"] = 4096
    response = api.post("/api/admin/jobs", headers=JSON, data=json.dumps({"type": "system.ping",
                                                                          "data": {"echo": "x" * 5000}}))  # fmt: skip
    _error(response, 413)


def test_job_data_over_max_job_data_bytes_is_413_and_nothing_is_queued(api, redis_conn):
    limit = max_job_data_bytes()
    body = {"type": "system.ping", "data": {"echo": "x" * (limit + 1)}, "options": {"queue": "sync"}}
    error = _error(api.post("/api/admin/jobs", headers=JSON, data=json.dumps(body)), 413, "job_data_too_large")
    assert error["details"]["limit"] == limit and error["details"]["size"] > limit
    assert redis_conn.llen(queue_keys("sync").queue) == 0
    with pytest.raises(JobDataTooLargeError):
        enqueue(redis_conn, "system.ping", {"echo": "x" * (limit + 1)}, {"queue": "sync"})


# ------------------------------------------------------------------------------------------- the 500s (3)


@pytest.mark.parametrize("method, path", [("post", "/api/admin/jobs"), ("post", "/api/admin/workers"),
                                          ("patch", "/api/admin/jobs/schedules/nightly")])  # fmt: skip
def test_deeply_nested_json_is_a_400(api, method, path):
    _error(api.open(path, method=method, headers=JSON, data=DEEP), 400, "invalid_json")
    nested = {"type": "system.ping", "data": {"echo": json.loads("[" * 100 + "]" * 100)}}
    _error(api.open(path, method=method, headers=JSON, data=json.dumps(nested)), 400, "invalid_json")


def test_a_successful_action_keeps_its_audit_row_whatever_its_body(api, database_url, redis_conn):
    job = api.post("/api/admin/jobs", headers=AUTH, json={"type": "system.ping", "options": {"queue": "sync"}})
    job_id = job.get_json()["jobId"]
    canceled = api.post(f"/api/admin/jobs/{job_id}/cancel", headers=JSON, data=DEEP)
    assert canceled.status_code == 200, canceled.get_data(as_text=True)
    run = api.post("/api/admin/jobs/schedules/nightly/run", headers=JSON, data='{"x": NaN}')
    assert run.status_code == 201, run.get_data(as_text=True)
    rows = _audit(database_url)
    assert [(r["path"], r["status"]) for r in rows[-2:]] == [(f"/api/admin/jobs/{job_id}/cancel", 200),
                                                            ("/api/admin/jobs/schedules/nightly/run", 201)]
    assert rows[-2]["request"] == {"text": DEEP[:4000]} and rows[-1]["request"] == {"text": '{"x": NaN}'}


@pytest.mark.parametrize("change", [{"cron_expression": "0 0 31 2 *"}, {"timezone": "A" * 256},
                                    {"timezone": "../../../../etc/passwd"}])  # fmt: skip
def test_a_cron_that_never_fires_or_an_impossible_zone_is_a_400(api, change):
    _error(api.patch("/api/admin/jobs/schedules/nightly", headers=AUTH, json=change), 400, "invalid_request")
    entry = api.get("/api/admin/jobs/schedules/nightly", headers=AUTH).get_json()
    assert entry["cron_override"] is None and entry["timezone_override"] is None


# ------------------------------------------------------------------------------------------ NaN, Infinity (4)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_nan_and_infinity_are_refused_wherever_json_comes_in(api, redis_conn, literal):
    job = f'{{"type": "system.ping", "data": {{"echo": {literal}}}, "options": {{"queue": "sync"}}}}'
    for path in ("/api/admin/jobs", "/api/admin/workers"):
        _error(api.post(path, headers=JSON, data=job), 400, "invalid_json")
    clean = f'{{"action": "clean", "state": "completed", "grace": {literal}}}'
    _error(api.post("/api/admin/workers", headers=JSON, data=clean), 400, "invalid_json")
    _error(api.patch("/api/admin/jobs/schedules/nightly", headers=JSON, data=f'{{"is_active": {literal}}}'), 400)
    assert redis_conn.llen(queue_keys("sync").queue) == 0


def test_enqueue_refuses_nan_from_python_too(redis_conn):
    with pytest.raises(InvalidJobError, match="not JSON-serializable"):
        enqueue(redis_conn, "system.ping", {"echo": float("nan")}, {"queue": "sync"})


# -------------------------------------------------------------------------------------------- empty strings (5)


def test_an_empty_queue_name_is_a_400_and_touches_no_queue(api, redis_conn):
    for action in ("pause", "resume", "retry-failed", "clean"):
        for name in ("", None):
            _error(api.post("/api/admin/workers", headers=AUTH, json={"action": action, "queueName": name}), 400)
    assert not any(redis_conn.exists(queue_keys(name).paused) for name in queue_names())
    api.post("/api/admin/jobs", headers=AUTH, json={"type": "system.ping", "options": {"queue": "sync"}})
    _error(api.delete("/api/admin/workers?queueName=&force=true", headers=AUTH), 400)
    assert redis_conn.llen(queue_keys("sync").queue) == 1
    for query in ("jobs?queueName=", "jobs/logs?jobName=", "jobs/logs?status=", "jobs/logs?error=",
                  "jobs/history-stats?queue="):  # fmt: skip
        _error(api.get(f"/api/admin/{query}", headers=AUTH), 400, "invalid_request")


@pytest.mark.parametrize("field", ["cron_expression", "timezone"])
def test_an_empty_cron_or_zone_is_a_400_and_pins_nothing(api, field):
    _error(api.patch("/api/admin/jobs/schedules/nightly", headers=AUTH, json={field: ""}), 400, "invalid_request")
    entry = api.get("/api/admin/jobs/schedules/nightly", headers=AUTH).get_json()
    assert entry["cron_override"] is None and entry["timezone_override"] is None


# ------------------------------------------------------------------------------------------ login redirect (6)


@pytest.mark.parametrize("target", ["/%09/evil.example", "/%0a/x", "/%0d/x", "/%5c/evil.example", "//evil.example",
                                    "/%20/evil.example", "https://evil.example/"])  # fmt: skip
def test_signing_in_never_redirects_off_site(client, target):
    page = client.get(f"/login?next={target}")
    assert page.status_code == 200
    signed_in = client.post(f"/login?next={target}", data={"token": TOKEN})
    assert signed_in.status_code == 302
    assert signed_in.headers["Location"] == "/admin/"


def test_signing_in_still_returns_to_the_page_asked_for(client):
    signed_in = client.post("/login?next=/admin/jobs%3Fid%3Dabc", data={"token": TOKEN})
    assert signed_in.headers["Location"] == "/admin/jobs?id=abc"


# ------------------------------------------------------------------------------------- what the app refuses (7)


@pytest.mark.parametrize("body, field", [({"action": "pause", "queueName": "sync", "force": True}, "force"),
                                         ({"action": "resume", "grace": 1}, "grace"),
                                         ({"action": "setup-recurring", "queueName": "sync"}, "queueName"),
                                         ({"action": "clean", "jobIds": []}, "jobIds")])  # fmt: skip
def test_unknown_fields_on_a_control_action_are_refused(api, redis_conn, body, field):
    error = _error(api.post("/api/admin/workers", headers=AUTH, json=body), 400, "invalid_request")
    assert repr(field) in error["message"]
    assert not redis_conn.exists(queue_keys("sync").paused)


@pytest.mark.parametrize("method, path", [("post", "/api/admin/jobs"), ("post", "/api/admin/workers"),
                                          ("patch", "/api/admin/jobs/schedules/nightly")])  # fmt: skip
def test_a_json_body_sent_as_text_plain_is_a_415(api, method, path):
    body = json.dumps({"type": "system.ping", "options": {"queue": "sync"}})
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        response = api.open(path, method=method, headers={**AUTH, "Content-Type": content_type}, data=body)
        _error(response, 415, "unsupported_media_type")


def test_a_nul_in_a_path_is_a_400_audited_without_an_error_log(api, database_url, caplog):
    with caplog.at_level(logging.WARNING):
        _error(api.post("/api/admin/jobs/a%00b/cancel", headers=AUTH), 400, "invalid_request")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert _audit(database_url)[-1]["path"] == "/api/admin/jobs/a\ufffdb/cancel"


# ------------------------------------------------------------------------------------------- the document (8)


def test_the_document_lists_what_every_operation_can_answer(api):
    document = api.get("/api/admin/openapi.json", headers=AUTH).get_json()
    assert document["components"]["schemas"]["QueueName"]["enum"] == queue_names()
    assert "system.ping" in document["components"]["schemas"]["TaskType"]["enum"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            statuses = set(operation["responses"])
            assert {"400", "401", "414", "503"} <= statuses, (method, path)
            if "requestBody" in operation:
                assert {"413", "415"} <= statuses, (method, path)
    # and the server answers them in the documented shape
    _error(api.get("/api/admin/jobs/stats"), 401, "unauthorized")
    _error(api.get("/api/admin/jobs?status=" + "x" * 9000, headers=AUTH), 414, "uri_too_long")
