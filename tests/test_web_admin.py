"""The admin API on the real Redis and PostgreSQL: auth, SPEC's shapes, controls, job creation, JSON errors."""

from __future__ import annotations

import pytest

from app.migrate import apply_migrations
from app.worker import build_worker
from queues import queue_keys, queue_names
from tests.conftest import TOKEN

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
     ("post", "/api/admin/jobs/x/cancel")],
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
    cleaned = api.post("/api/admin/workers", headers=AUTH, json={"action": "clean", "state": "failed", "grace": 0})
    assert cleaned.status_code == 200 and set(cleaned.get_json()["removed"]) == set(queue_names())


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
    from app.servers import free_port

    app.extensions["bullrq.redis"] = redis_from_url(f"redis://127.0.0.1:{free_port()}/0")
    _error(client.get("/api/admin/workers?action=stats", headers=AUTH), 503, "redis_unavailable")
    health = client.get("/api/admin/workers?action=health-check", headers=AUTH)
    assert health.status_code == 503 and health.get_json()["status"] == "unhealthy"
