"""The login page, the session cookie and rq-dashboard behind it."""

from __future__ import annotations

import html
import json
import pickle
import time
import zlib

import pytest

from app.runtime.control import delete, pause
from app.runtime.enqueue import enqueue
from app.runtime.flows import create_batch
from app.runtime.jobs import fetch_job
from app.runtime.stats import queue_stats
from app.runtime.worker import build_worker
from app.store.db import connect
from app.store.history import HistoryWriter
from app.store.migrate import apply_migrations
from app.tasks import queue_keys
from app.web.dashboard import REGISTRIES
from queues import job_key, queue_names
from tests.conftest import TOKEN
from tests.fixtures import wait_for
from tests.handlers import open_gate
from tests.waits import status, wait_status

pytest_plugins = ["tests.worker_processes"]  # the `workers` fixture

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
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in detail["description"]  # the job page draws it unescaped
    # the list page escapes its description itself, so the list's JSON carries the text as it is (escaped once:
    # test_lists_escape_exactly_once_and_html_stays_inert)
    assert "<script>alert(1)</script>" in jobs.get_json()["jobs"][0]["description"]


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


# ----------------------------------------------------------------- the whole truth, on real Redis and workers

DASH = "/api/admin/queues"
HOSTILE = '<img src=x onerror="window.pwned=1"><b>"x" & y</b>'


def _get(client, path: str):
    response = client.get(f"{DASH}{path}", headers=AUTH, follow_redirects=True)
    assert response.status_code < 500, f"{path}: {response.status_code} {response.get_data(as_text=True)[:500]}"
    return response


def _post(client, path: str):
    response = client.post(f"{DASH}{path}", headers=AUTH)
    assert response.status_code < 500, f"{path}: {response.status_code} {response.get_data(as_text=True)[:500]}"
    return response


def _browse_everything(client, job_ids=()) -> dict:
    """Every page and JSON endpoint of rq-dashboard, for every queue and registry: each must answer 200."""
    answers = {}
    for path in ("/", "/0/", "/0/view", "/0/view/queues", "/0/view/workers", "/0/view/jobs", "/0/data/queues.json",
                 "/0/data/workers.json"):  # fmt: skip
        answers[path] = _get(client, path)
    for queue in queue_names():
        for registry in REGISTRIES:
            for order in ("asc", "dsc"):
                path = f"/0/data/jobs/{queue}/{registry}/8/{order}/1.json"
                answers[path] = _get(client, path)
            answers[f"view {queue}/{registry}"] = _get(client, f"/0/view/jobs/{queue}/{registry}/8/asc/1")
    for job_id in job_ids:
        answers[f"job {job_id}"] = _get(client, f"/0/data/job/{job_id}.json")
        answers[f"view job {job_id}"] = _get(client, f"/0/view/job/{job_id}")
    bad = {path: response.status_code for path, response in answers.items() if response.status_code != 200}
    assert not bad, bad
    return answers


def _workers_json(client) -> list[dict]:
    return _get(client, "/0/data/workers.json").get_json()["workers"]


@pytest.mark.slow
def test_every_page_and_endpoint_answers_with_workers_idle_busy_dead_and_restarted(client, redis_conn, workers):
    workers.start("harvest", name="dash-w")
    done = enqueue(redis_conn, "system.ping", {"echo": "first"}, {"queue": "harvest"})
    wait_status(redis_conn, done.id, "finished")
    # idle after a job: RQ's own Worker.get_current_job() raised NoSuchJobError on the "" left behind
    wait_for(lambda: [w["current_job"] for w in _workers_json(client)] == ["idle"], message="an idle worker")
    _browse_everything(client, [done.id])

    busy = enqueue(redis_conn, "semantics.gated", {"tag": "dash-busy"}, {"queue": "harvest"})
    wait_status(redis_conn, busy.id, "started")
    (row,) = _workers_json(client)
    assert row["current_job"]["job_id"] == busy.id and row["state"] == "busy"
    _browse_everything(client, [done.id, busy.id])

    workers.kill("dash-w")  # dead: its registration and its lease stay until they expire
    _browse_everything(client, [done.id, busy.id])
    redis_conn.delete(job_key(busy.id))  # a registered worker whose current job is gone
    (row,) = _workers_json(client)
    assert row["current_job"]["job_id"] == busy.id and "no longer in Redis" in row["current_job"]["description"]
    _browse_everything(client, [done.id])

    workers.start("harvest", name="dash-w2")
    _browse_everything(client, [done.id])
    assert "dash-w2" in " ".join(w["name"] for w in _workers_json(client))


def test_bad_input_answers_a_json_4xx_never_a_500(client, redis_conn):
    enqueue(redis_conn, "system.ping", {}, {"queue": "sync"})
    cases = {
        "/0/view/job/no-such-job": 404,
        "/0/data/job/no-such-job.json": 404,
        "/0/data/jobs/sync/nonsense/8/asc/1.json": 404,
        "/0/view/jobs/sync/nonsense/8/asc/1": 404,
        "/0/data/jobs/no-such-queue/queued/8/asc/1.json": 404,
        "/0/view/jobs/no-such-queue/queued/8/asc/1": 404,
        "/0/data/jobs/sync/queued/0/asc/1.json": 400,
        "/0/data/jobs/sync/queued/x/asc/1.json": 400,
        "/0/data/jobs/sync/queued/-3/asc/1.json": 400,
        "/0/data/jobs/sync/queued/100000/asc/1.json": 400,
        "/0/view/jobs/sync/queued/0/asc/1": 400,
        "/0/data/jobs/sync/queued/8/sideways/1.json": 400,
        "/0/data/jobs/sync/queued/8/asc/0.json": 400,
        "/0/data/jobs/sync/queued/8/asc/x.json": 400,
        "/1/data/queues.json": 404,
        "/7/view/queues": 404,
        "/requeue/sync": 405,  # a GET must never act
    }
    for path, expected in cases.items():
        response = _get(client, path)
        assert response.status_code == expected and response.is_json, (path, response.status_code)
        assert response.get_json()["error"]["message"], path
    for path in ("/job/no-such-job/delete", "/job/no-such-job/requeue"):
        response = _post(client, path)
        assert response.status_code == 404 and response.is_json, path
    for path in ("/queue/no-such-queue/queued/empty", "/queue/sync/nonsense/empty", "/queue/no-such-queue/compact",
                 "/requeue/no-such-queue"):  # fmt: skip
        response = _post(client, path)
        assert response.status_code == 404 and response.is_json, path


def _counts(client) -> dict[str, dict]:
    rows = _get(client, "/0/data/queues.json").get_json()["queues"]
    return {row["name"].removesuffix(" (paused)"): row for row in rows}


def test_every_waiting_job_of_every_priority_is_counted_and_listed_paused_or_not(client, redis_conn):
    # every declared queue is listed before any job exists
    assert list(_counts(client)) == queue_names()
    ids = {}
    for priority in range(1, 11):
        ids[priority] = enqueue(redis_conn, "system.ping", {"echo": priority}, {"queue": "embeddings",
                                                                               "priority": priority}).id  # fmt: skip
    hook = {"channel": "webhook", "to": "https://example.com/hook", "text": "hi"}
    default_high = [enqueue(redis_conn, "notifications.send", hook).id for _ in range(3)]
    delayed = enqueue(redis_conn, "system.ping", {}, {"queue": "sync", "delay": 600, "priority": "high"})
    pause(redis_conn, "notifications")

    stats = queue_stats(redis_conn)["queues"]
    rows = _counts(client)
    for name in queue_names():
        assert rows[name]["count"] == stats[name]["waiting"], name
        assert rows[name]["scheduled_job_registry_count"] == stats[name]["delayed"], name
        assert rows[name]["failed_job_registry_count"] == stats[name]["failed"], name
    assert rows["embeddings"]["count"] == 10 and rows["notifications"]["count"] == 3
    assert rows["notifications"]["paused"] and rows["notifications"]["name"] == "notifications (paused)"
    assert rows["sync"]["scheduled_job_registry_count"] == 1

    listed = _get(client, "/0/data/jobs/embeddings/queued/100/asc/1.json").get_json()
    assert [job["id"] for job in listed["jobs"]] == [ids[p] for p in range(1, 11)]  # the order they run in
    newest = _get(client, "/0/data/jobs/embeddings/queued/3/dsc/1.json").get_json()
    assert [job["id"] for job in newest["jobs"]] == [ids[10], ids[9], ids[8]]
    paged = _get(client, "/0/data/jobs/embeddings/queued/4/asc/3.json").get_json()
    assert [job["id"] for job in paged["jobs"]] == [ids[9], ids[10]] and paged["pagination"]["num_pages"] == 3
    waiting = _get(client, "/0/data/jobs/notifications/queued/8/asc/1.json").get_json()
    assert {job["id"] for job in waiting["jobs"]} == set(default_high)
    scheduled = _get(client, "/0/data/jobs/sync/scheduled/8/asc/1.json").get_json()
    assert [job["id"] for job in scheduled["jobs"]] == [delayed.id]
    grouped = [enqueue(redis_conn, "sync.manual", {"workspaceId": w}).id for w in ("w1", "w2")]  # in groups' lists
    assert _counts(client)["sync"]["count"] == 2
    listed = _get(client, "/0/data/jobs/sync/queued/8/asc/1.json").get_json()
    assert [job["id"] for job in listed["jobs"]] == grouped


def test_lists_escape_exactly_once_and_html_stays_inert(client, redis_conn):
    job = enqueue(redis_conn, "system.ping", {"echo": HOSTILE}, {"queue": "sync"})
    enqueue(redis_conn, "semantics.permanent", {"tag": HOSTILE}, {"queue": "sync"})
    build_worker(["sync"], redis_conn, "escape-test").work(burst=True)

    (row,) = _get(client, "/0/data/jobs/sync/finished/8/asc/1.json").get_json()["jobs"]
    # the list's page escapes description and exc_info itself (jQuery's .text()): sent as they are
    assert row["description"] == fetch_job(job.id, redis_conn).description and HOSTILE in row["description"]
    (failed,) = _get(client, "/0/data/jobs/sync/failed/8/asc/1.json").get_json()["jobs"]
    assert f"cannot ever work: {HOSTILE}" in failed["exc_info"] and "&amp;" not in failed["exc_info"]
    # the job's page puts every field in as it comes: escaped here, once
    detail = _get(client, f"/0/data/job/{job.id}.json").get_json()
    assert detail["result"] == html.escape(HOSTILE) and "&amp;lt;" not in detail["description"]
    assert html.unescape(detail["description"]) == fetch_job(job.id, redis_conn).description
    assert json.loads(html.unescape(detail["metadata"]))["state"] == "completed"


def _planted_pickle(redis_conn, marker) -> str:
    """A job whose every serialized field is a pickle that creates `marker` when unpickled."""

    class Boom:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bomb = pickle.dumps(Boom())
    job_id = "planted-pickle"
    redis_conn.hset(job_key(job_id), mapping={
        "status": "failed", "origin": "sync", "description": "planted", "data": zlib.compress(bomb), "meta": bomb,
        "created_at": "2026-01-01T00:00:00.000000Z", "ended_at": "2026-01-01T00:00:01.000000Z",
    })  # fmt: skip
    redis_conn.zadd(queue_keys("sync").failed, {job_id: time.time() + 3600})
    return job_id


def test_nothing_reads_a_job_with_pickle(client, redis_conn, tmp_path):
    marker = tmp_path / "unpickled"
    job_id = _planted_pickle(redis_conn, marker)
    _browse_everything(client, [job_id])
    assert _post(client, f"/job/{job_id}/requeue").status_code == 200
    assert _post(client, f"/job/{job_id}/delete").status_code == 200
    assert not marker.exists() and not redis_conn.exists(job_key(job_id))


def _history(redis_conn, database_url, job_id) -> list[tuple[int, str]]:
    writer = HistoryWriter(redis_conn, database_url, "dash-test")
    while writer.drain_once(block=0.05):
        pass
    writer.stop()
    with connect(database_url, autocommit=True) as conn:
        rows = conn.execute("SELECT attempt, status FROM job_runs WHERE job_id = %s ORDER BY attempt", (job_id,))
        return [(row["attempt"], row["status"]) for row in rows.fetchall()]


def test_requeue_keeps_the_history_numbering_and_the_dedup_key(client, redis_conn, database_url):
    apply_migrations(database_url)
    job = enqueue(redis_conn, "semantics.flaky", {"tag": "dash-requeue", "fail_times": 1},
                  {"queue": "sync", "attempts": 1, "jobId": "nightly-7"})  # fmt: skip
    build_worker(["sync"], redis_conn, "requeue-test", database_url).work(burst=True)
    assert status(redis_conn, job.id) == "failed" and not redis_conn.exists(queue_keys("sync").dedup("nightly-7"))
    done = enqueue(redis_conn, "system.ping", {}, {"queue": "sync"})
    build_worker(["sync"], redis_conn, "requeue-test", database_url).work(burst=True)

    refused = _post(client, f"/job/{done.id}/requeue")
    assert refused.status_code == 409 and "only failed or canceled" in refused.get_json()["error"]["message"]
    assert _post(client, f"/job/{job.id}/requeue").get_json()["status"] == "OK"
    assert redis_conn.get(queue_keys("sync").dedup("nightly-7")) == job.id.encode()  # its dedup key back
    assert enqueue(redis_conn, "system.ping", {}, {"queue": "sync", "jobId": "nightly-7"}).id == job.id
    build_worker(["sync"], redis_conn, "requeue-test", database_url).work(burst=True)
    assert status(redis_conn, job.id) == "finished"
    assert _history(redis_conn, database_url, job.id) == [(1, "failed"), (2, "completed")]  # not a second attempt 1

    again = enqueue(redis_conn, "semantics.fail", {"tag": "dash-all"}, {"queue": "sync", "attempts": 1})
    build_worker(["sync"], redis_conn, "requeue-test", database_url).work(burst=True)
    assert _post(client, "/requeue/sync").get_json() == {"status": "OK", "count": 1}
    build_worker(["sync"], redis_conn, "requeue-test", database_url).work(burst=True)
    assert _history(redis_conn, database_url, again.id) == [(1, "failed"), (2, "failed")]


def test_delete_empty_and_compact_keep_lanes_dedup_keys_and_stats(client, redis_conn, workers):
    keys = queue_keys("embeddings")
    high = enqueue(redis_conn, "system.ping", {}, {"queue": "embeddings", "priority": "high", "jobId": "k1"})
    low = enqueue(redis_conn, "system.ping", {}, {"queue": "embeddings", "priority": "low"})
    normal = enqueue(redis_conn, "system.ping", {}, {"queue": "embeddings"})
    later = enqueue(redis_conn, "system.ping", {}, {"queue": "embeddings", "delay": 600, "priority": 2})
    totals = redis_conn.hgetall(keys.stats)

    assert _post(client, f"/job/{high.id}/delete").get_json()["status"] == "OK"
    assert redis_conn.llen(keys.lane(1)) == 0 and not redis_conn.exists(job_key(high.id))
    assert not redis_conn.exists(keys.dedup("k1"))  # the key is free for a new job
    assert enqueue(redis_conn, "system.ping", {}, {"queue": "embeddings", "jobId": "k1"}).created

    emptied = _post(client, "/queue/embeddings/queued/empty").get_json()
    assert emptied == {"status": "OK", "count": 3}  # every lane, not only rq:queue:embeddings
    assert queue_stats(redis_conn)["queues"]["embeddings"]["waiting"] == 0
    assert not redis_conn.exists(job_key(low.id)) and not redis_conn.exists(job_key(normal.id))
    assert redis_conn.zscore(keys.scheduled, later.id) is not None  # delayed jobs are another registry
    assert _post(client, "/queue/embeddings/scheduled/empty").get_json()["count"] == 1
    assert queue_stats(redis_conn)["queues"]["embeddings"]["delayed"] == 0
    assert redis_conn.hgetall(keys.stats) == totals  # deleting is not an outcome of a run

    workers.start("embeddings", name="dash-del")
    running = enqueue(redis_conn, "semantics.gated", {"tag": "dash-del"}, {"queue": "embeddings"})
    wait_status(redis_conn, running.id, "started")
    refused = _post(client, f"/job/{running.id}/delete")
    assert refused.status_code == 409 and "cancel it" in refused.get_json()["error"]["message"]
    assert _post(client, "/queue/embeddings/started/empty").status_code == 409
    open_gate(redis_conn, "dash-del")
    wait_status(redis_conn, running.id, "finished")
    assert _post(client, "/queue/embeddings/finished/empty").get_json()["count"] == 1

    stale = enqueue(redis_conn, "system.ping", {}, {"queue": "reports", "priority": 3})
    kept = enqueue(redis_conn, "system.ping", {}, {"queue": "reports", "priority": 3})
    redis_conn.delete(job_key(stale.id))
    assert _post(client, "/queue/reports/compact").get_json() == {"status": "OK", "count": 1}
    assert redis_conn.lrange(queue_keys("reports").lane(3), 0, -1) == [kept.id.encode()]


def test_deferred_jobs_are_counted_listed_shown_and_emptied(client, redis_conn):
    parent = enqueue(redis_conn, "system.ping", {}, {"queue": "harvest"})
    children = [enqueue(redis_conn, "system.ping", {"echo": n}, {"queue": "harvest", "dependsOn": [parent.id]}).id
                for n in range(3)]  # fmt: skip
    batch = create_batch(redis_conn, [("system.ping", {}, {"queue": "harvest"})],
                         on_complete=("semantics.batch-done", {"tag": "done"}, {"queue": "harvest"}))  # fmt: skip
    held = batch.callbacks["onComplete"]

    rows = _counts(client)
    assert rows["harvest"]["deferred_job_registry_count"] == queue_stats(redis_conn)["queues"]["harvest"]["deferred"]
    assert rows["harvest"]["deferred_job_registry_count"] == 4 and rows["harvest"]["count"] == 2
    assert rows["harvest"]["deferred_url"].endswith("/0/view/jobs/harvest/deferred/8/asc/1")
    listed = _get(client, "/0/data/jobs/harvest/deferred/100/asc/1.json").get_json()
    assert {job["id"] for job in listed["jobs"]} == {*children, held}
    paged = _get(client, "/0/data/jobs/harvest/deferred/3/asc/2.json").get_json()
    assert len(paged["jobs"]) == 1 and paged["pagination"]["num_pages"] == 2
    _browse_everything(client, [*children, held])

    detail = _get(client, f"/0/data/job/{children[0]}.json").get_json()
    assert detail["status"] == "deferred" and json.loads(html.unescape(detail["metadata"]))["state"] == "deferred"
    assert (detail["depends_on"], detail["depends_on_status"]) == ([parent.id], ["active"])
    callback = json.loads(html.unescape(_get(client, f"/0/data/job/{held}.json").get_json()["metadata"]))
    assert (callback["state"], callback["batch_id"]) == ("deferred", batch.id)
    assert "depends_on" not in _get(client, f"/0/data/job/{parent.id}.json").get_json()

    # a parent gone from Redis: its page says "(Expired)" rather than linking to a 404
    orphan_parent = enqueue(redis_conn, "system.ping", {}, {"queue": "reports"})
    orphan = enqueue(redis_conn, "system.ping", {}, {"queue": "reports", "dependsOn": [orphan_parent.id],
                                                      "onParentFailure": "ignore"})  # fmt: skip
    delete(redis_conn, orphan_parent.id)  # counts as canceled: ignored, so the child waits to run
    shown = _get(client, f"/0/data/job/{orphan.id}.json").get_json()
    assert (shown["status"], shown["depends_on_status"]) == ("queued", ["expired"])

    # Empty on the deferred page: bullrq's delete of each, its batch and the rest untouched
    emptied = _post(client, "/queue/harvest/deferred/empty").get_json()
    assert emptied == {"status": "OK", "count": 4}
    assert queue_stats(redis_conn)["queues"]["harvest"]["deferred"] == 0
    assert not any(redis_conn.exists(job_key(job_id)) for job_id in [*children, held])
    assert status(redis_conn, parent.id) == "queued" and redis_conn.exists(job_key(batch.job_ids[0]))
    assert _post(client, "/queue/harvest/deferred/empty").get_json() == {"status": "OK", "count": 0}
    build_worker(["harvest"], redis_conn, "after-empty").work(burst=True)  # parents end: nothing left to release
    assert status(redis_conn, parent.id) == "finished" and queue_stats(redis_conn)["queues"]["harvest"]["deferred"] == 0
