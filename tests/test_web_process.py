"""`bullrq web` as a real process (gunicorn): it refuses to start without an admin token outside dev mode, and
SIGTERM lets a request in flight finish before it exits."""

from __future__ import annotations

import os
import signal
import subprocess
import threading

import httpx
import psycopg
import pytest

from app.local.servers import free_port
from app.scheduling.schedule_store import sync_declared
from app.scheduling.schedules import load_schedules
from app.store.migrate import apply_migrations
from tests.conftest import TOKEN
from tests.fixtures import BIN, processes_with, wait_for

pytestmark = pytest.mark.slow

SCHEDULES = 'schedules:\n  - id: nightly\n    task: system.ping\n    queue: harvest\n    cron: "0 3 * * *"\n'


def _env(redis_url: str, database_url: str, **extra: str) -> dict:
    env = {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": database_url, "PYTHONUNBUFFERED": "1",
           "WEB_CONCURRENCY": "1", "WEB_THREADS": "4"}  # fmt: skip
    env.pop("DEBUG", None)
    env.update(extra)
    return env


def test_web_refuses_to_start_without_an_admin_token(redis_url, database_url, isolated_env):
    port = free_port()
    result = subprocess.run([str(BIN / "bullrq"), "web", "--port", str(port)], env=_env(redis_url, database_url),
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "ADMIN_TOKEN" in errors[0] and "Traceback" not in result.stderr, result.stderr
    assert not (isolated_env / "admin_token").exists()  # none was made up for it
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


def _waiting_on_a_lock(conn) -> list[int]:
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query ILIKE 'UPDATE job_schedules%%'"
    ).fetchall()
    return [pid for (pid,) in rows]


def test_sigterm_lets_a_request_in_flight_finish(redis_conn, redis_url, database_url, tmp_path):
    apply_migrations(database_url)
    path = tmp_path / "schedules.yaml"
    path.write_text(SCHEDULES)
    with psycopg.connect(database_url, autocommit=True) as conn:
        sync_declared(conn, load_schedules(path))
    port = free_port()
    log = tmp_path / "web.log"
    with open(log, "wb") as out:
        web = subprocess.Popen([str(BIN / "bullrq"), "web", "--port", str(port)],
                               env=_env(redis_url, database_url, ADMIN_TOKEN=TOKEN), stdout=out,
                               stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    answer: dict = {}
    request = None
    try:
        def ready():
            assert web.poll() is None, log.read_text()
            try:
                return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, timeout=120, interval=0.2, message="the web app to be ready")
        with psycopg.connect(database_url) as holder:
            # the request's UPDATE of the entry waits on this lock: it is in flight for as long as the test wants
            holder.execute("SELECT * FROM job_schedules WHERE id = 'nightly' FOR UPDATE")

            def run_now():
                try:
                    answer["response"] = httpx.post(f"{base}/api/admin/jobs/schedules/nightly/run", timeout=120,
                                                    headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
                except httpx.HTTPError as exc:
                    answer["error"] = exc

            request = threading.Thread(target=run_now)
            request.start()
            with psycopg.connect(database_url, autocommit=True) as watcher:
                wait_for(lambda: _waiting_on_a_lock(watcher), timeout=60, message="the request to be in flight")
            web.send_signal(signal.SIGTERM)
            wait_for(lambda: "Handling signal: term" in log.read_text(errors="replace"), timeout=60,
                     message="gunicorn to take the SIGTERM")  # fmt: skip
            assert web.poll() is None and "response" not in answer and "error" not in answer
        # the lock is released here: the request goes on inside a server that is shutting down
        request.join(timeout=120)
        assert web.wait(timeout=120) == 0, log.read_text()
    finally:
        if web.poll() is None:
            os.killpg(web.pid, signal.SIGKILL)
            web.wait()
    assert "error" not in answer, answer
    response = answer["response"]
    assert response.status_code == 201, response.text
    job_id = response.json()["jobId"]
    assert redis_conn.hget(f"rq:job:{job_id}", "schedule_id") == b"nightly"
    assert processes_with(f"--port {port}") == []
