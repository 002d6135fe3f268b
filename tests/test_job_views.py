"""What people read about a job: the job JSON of the API and `bullrq jobs show`, the job page, the worker's state
and the run history, with real worker processes on the real Redis and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from rq.worker import Worker

from app.runtime.enqueue import enqueue
from app.runtime.leases import recover
from app.runtime.worker import build_worker
from app.scheduling.schedule_store import fire, get_schedule, sync_declared
from app.scheduling.schedules import load_schedules
from app.store.db import connect
from app.store.migrate import apply_migrations
from app.tasks import queue_keys
from tests.conftest import TOKEN
from tests.fixtures import run_cli, wait_for
from tests.handlers import open_gate, runs
from tests.test_history import _drain
from tests.waits import wait_status

pytest_plugins = ["tests.worker_processes"]

AUTH = {"Authorization": f"Bearer {TOKEN}"}
THREE_TRIES = {"queue": "harvest", "attempts": 3, "backoff": {"type": "fixed", "delay": 0}}


@pytest.fixture
def api(client, database_url):
    apply_migrations(database_url)
    return client


def _job(api, job_id: str) -> dict:
    response = api.get(f"/api/admin/jobs/{job_id}", headers=AUTH)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def _shown(job_id: str) -> dict:
    """The job as `bullrq jobs show` prints it."""
    result = run_cli("bullrq", "jobs", "show", job_id)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_attempts_made_and_left_and_the_error_are_those_of_the_jobs_state(api, redis_conn, workers):
    workers.start("harvest", name="views")
    done = enqueue(redis_conn, "semantics.record", {"tag": "done"}, THREE_TRIES)
    doomed = enqueue(redis_conn, "semantics.permanent", {"tag": "doomed"}, THREE_TRIES)
    retrying = enqueue(redis_conn, "semantics.flaky-gated", {"tag": "again"}, THREE_TRIES)
    wait_status(redis_conn, done.id, "finished")
    wait_status(redis_conn, doomed.id, "failed")
    wait_for(lambda: len(runs(redis_conn, "again")) == 2, timeout=30, message="the second attempt to start")

    completed = _job(api, done.id)
    assert (completed["status"], completed["attempts"], completed["attempt"]) == ("completed", 3, 1)
    assert (completed["attempts_made"], completed["attempts_left"]) == (1, 0)  # it needed no more
    assert (completed["result"], completed["error"], completed["last_error"]) == ("done", None, None)

    failed = _job(api, doomed.id)
    assert (failed["status"], failed["attempts_made"], failed["attempts_left"]) == ("failed", 1, 0)  # for good
    assert "PermanentFailure: cannot ever work: doomed" in failed["error"] and failed["result"] is None

    active = _job(api, retrying.id)
    assert (active["status"], active["attempt"], active["attempts_made"], active["attempts_left"]) == (
        "active", 2, 2, 1)
    assert active["error"] is None  # attempt 2 has not failed: attempt 1's traceback is not the job's error
    assert "RuntimeError: flaky again run 1" in active["last_error"]
    assert _shown(retrying.id) | {"progress": None} == active | {"progress": None}  # the CLI prints the same

    page = api.get(f"/admin/jobs?id={doomed.id}", headers=AUTH)
    if page.status_code == 302:  # pages take the session, not the bearer token
        assert api.post("/login", data={"token": TOKEN}).status_code == 302
        page = api.get(f"/admin/jobs?id={doomed.id}")
    text = page.get_data(as_text=True)
    assert '<dd id="job-attempts">1 made, 0 left (of 3)</dd>' in text

    open_gate(redis_conn, "again")
    wait_status(redis_conn, retrying.id, "finished")
    ended = _job(api, retrying.id)
    assert (ended["attempts_made"], ended["attempts_left"], ended["error"], ended["last_error"]) == (2, 0, None, None)


def test_a_worker_whose_outcome_was_discarded_is_not_left_busy_on_that_job(redis_conn, workers):
    workers.start("harvest", name="slow")
    job = enqueue(redis_conn, "semantics.gated", {"tag": "taken-back"}, {"queue": "harvest", "attempts": 1})
    wait_for(lambda: runs(redis_conn, "taken-back"), message="the handler to start")
    # another worker took the job back meanwhile (as after a missed lease): the run's outcome will be discarded
    (member,) = redis_conn.zrange(queue_keys("harvest").started, 0, -1)
    assert recover(redis_conn, "harvest", member=member.decode()) == [(job.id, "failed")]

    open_gate(redis_conn, "taken-back")
    wait_for(lambda: runs(redis_conn, "taken-back", event="end"), message="the run to end")

    def worker():
        [found] = [w for w in Worker.all(connection=redis_conn) if w.name.startswith("slow")]
        return found

    wait_for(lambda: worker().get_state() == "idle", message="the worker to be idle")
    assert not worker().get_current_job_id()  # what `workers status` and rq-dashboard show as its job
    assert redis_conn.hget(f"rq:job:{job.id}", "status") == b"failed"  # the discarded outcome changed nothing


def test_history_tells_a_run_now_from_a_cron_run(api, redis_conn, database_url, tmp_path):
    schedules = tmp_path / "schedules.yaml"
    schedules.write_text('schedules:\n  - id: nightly\n    task: system.ping\n    queue: harvest\n'
                         '    cron: "0 3 * * *"\n')
    with connect(database_url, autocommit=True) as conn:
        sync_declared(conn, load_schedules(schedules))
        row = get_schedule(conn, "nightly")
        slot = row["next_run_at"]
        by_hand = api.post("/api/admin/jobs/schedules/nightly/run", headers=AUTH).get_json()["jobId"]
        build_worker(["harvest"], redis_conn, "views-1", database_url).work(burst=True)
        by_cron = fire(conn, redis_conn, get_schedule(conn, "nightly"), slot, slot + timedelta(days=1),
                       now=datetime.now(UTC))
    assert by_cron is not None
    build_worker(["harvest"], redis_conn, "views-2", database_url).work(burst=True)
    _drain(redis_conn, database_url)

    history = api.get("/api/admin/jobs/schedules/nightly/history", headers=AUTH).get_json()["runs"]
    seen = {run["job_id"]: (run["trigger"], run["schedule_slot"]) for run in history}
    assert seen[by_hand] == ("run_now", None)
    assert seen[by_cron][0] == "cron" and datetime.fromisoformat(seen[by_cron][1]) == slot
