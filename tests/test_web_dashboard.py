"""The login page, the session cookie and rq-dashboard behind it."""

from __future__ import annotations

from app.enqueue import enqueue
from tests.conftest import TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_dashboard_sends_people_to_the_login_page(client):
    response = client.get("/api/admin/queues/")
    assert response.status_code == 302 and "/login?next=/api/admin/queues/" in response.headers["Location"]
    assert client.get("/login").status_code == 200


def test_dashboard_with_a_token_lists_our_queues_read_as_json(client, redis_conn):
    job = enqueue(redis_conn, "system.ping", {"echo": "<script>alert(1)</script>"}, {"queue": "sync"})
    page = client.get("/api/admin/queues/", headers=AUTH)
    assert page.status_code == 200 and b"<title>RQ dashboard</title>" in page.data
    assert b'href="/api/admin/queues/static/' in page.data  # its assets, under the mount point
    queues = client.get("/api/admin/queues/0/data/queues.json", headers=AUTH).get_json()
    assert "sync" in {queue["name"] for queue in queues["queues"]}
    jobs = client.get("/api/admin/queues/0/data/jobs/sync/queued/8/asc/1.json", headers=AUTH)
    assert jobs.status_code == 200 and job.id in jobs.get_data(as_text=True)
    detail = client.get(f"/api/admin/queues/0/data/job/{job.id}.json", headers=AUTH).get_json()
    assert detail["origin"] == "sync" and detail["status"] == "queued"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in detail["description"]  # escaped before any page draws it
    assert "<script>" not in jobs.get_data(as_text=True)


def test_login_sets_a_strict_httponly_cookie_and_guards_changes_by_origin(client):
    wrong = client.post("/login", data={"token": "not-the-token-at-all"})
    assert wrong.status_code == 401 and b"not valid" in wrong.data
    assert client.get("/api/admin/workers?action=stats").status_code == 401

    signed_in = client.post("/login?next=/api/admin/jobs/stats", data={"token": TOKEN})
    assert signed_in.status_code == 302 and signed_in.headers["Location"].endswith("/api/admin/jobs/stats")
    cookie = signed_in.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    assert client.get("/api/admin/workers?action=stats").status_code == 200

    pause = {"action": "pause", "queueName": "sync"}
    refused = client.post("/api/admin/workers", json=pause)
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "cross_site"
    elsewhere = client.post("/api/admin/workers", json=pause, headers={"Origin": "https://evil.example"})
    assert elsewhere.status_code == 403
    here = client.post("/api/admin/workers", json=pause, headers={"Origin": "http://localhost"})
    assert here.status_code == 200

    client.post("/logout")
    assert client.get("/api/admin/workers?action=stats").status_code == 401


def test_login_never_redirects_off_site(client):
    response = client.post("/login?next=//evil.example/x", data={"token": TOKEN})
    assert response.headers["Location"].endswith("/admin/")
