"""`scripts/up` end to end: embedded servers, migrations, web, scheduler and workers; clean stop on SIGTERM."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import urllib.request
from pathlib import Path

import httpx
import psycopg
import pytest
import redis

from app.config import PROJECT_ROOT
from app.local.servers import free_port
from app.runtime.enqueue import enqueue
from app.store.migrate import discover
from bench.drill_kit import preload_env
from queues import queue_names
from tests.fixtures import processes_with, run_cli, wait_for
from tests.handlers import open_gate, runs
from tests.waits import status as job_status

pytestmark = pytest.mark.slow


@pytest.fixture
def open_home():
    """A run directory every user can traverse: as root, PostgreSQL runs as an unprivileged user."""
    parent = Path(tempfile.mkdtemp(prefix="bullrq-up-"))
    parent.chmod(0o755)
    yield parent / "var"
    for pid in processes_with("", parent / "var"):  # never leave a server behind, even when a test failed
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(parent, ignore_errors=True)


class Up:
    """scripts/up running in a subprocess, its output collected."""

    def __init__(self, home: Path, port: int):
        unset = ("REDIS_URL", "DATABASE_URL", "BULLRQ_THROWAWAY_SERVERS")
        env = preload_env({k: v for k, v in os.environ.items() if k not in unset}, "tests.handlers")  # gated jobs
        env.update(BULLRQ_HOME=str(home), PORT=str(port))
        self.env, self.port, self.lines = env, port, []
        self.process = subprocess.Popen(
            [str(PROJECT_ROOT / "scripts" / "up")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True,
        )  # fmt: skip
        threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True).start()

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def wait_ready(self) -> None:
        def ready():
            assert self.process.poll() is None, "scripts/up exited:\n" + "".join(self.lines[-30:])
            return self.get("/readyz")[0] == 200

        wait_for(ready, timeout=120, interval=0.2, message="/readyz to answer 200")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)

    def output(self) -> str:
        return "".join(self.lines)


def test_up_serves_ready_and_stops_cleanly_on_sigterm(open_home):
    up = Up(open_home, free_port())
    up.wait_ready()
    status, body = up.get("/readyz")
    assert '"redis"' in body and '"postgres"' in body

    token = (open_home / "admin_token").read_text().strip()
    assert stat.S_IMODE((open_home / "admin_token").stat().st_mode) == 0o600
    redis_url = (open_home / "redis" / "url").read_text().strip()
    database_url = (open_home / "postgres" / "url").read_text().strip()
    client = redis.Redis.from_url(redis_url)
    wait_for(lambda: len(client.smembers("rq:workers")) == len(queue_names()), message="every queue's worker")
    client.set("bullrq-test:kept", "yes")

    # the CLI finds the servers scripts/up started through the run directory
    env = {k: v for k, v in up.env.items() if k != "PORT"}
    listed = run_cli("workers", "status", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert sorted(q for row in json.loads(listed.stdout)["workers"] for q in row["queues"]) == sorted(queue_names())
    job_id = run_cli("bullrq", "enqueue", "system.ping", "--queue", "embeddings", "--data", '{"echo": 7}', env=env)
    assert job_id.returncode == 0, job_id.stderr

    # SIGTERM while a job runs (held at a gate) and a request is in flight (its UPDATE waits on a row lock held
    # here): both finish before scripts/up stops the servers
    held = enqueue(client, "semantics.gated", {"tag": "up-held", "wait": 120}, {"queue": "embeddings"})
    wait_for(lambda: runs(client, "up-held"), timeout=60, message="the held job to start")
    answer: dict = {}
    with psycopg.connect(database_url) as holder:
        holder.execute("SELECT * FROM job_schedules WHERE id = 'retention-cleanup' FOR UPDATE")

        def run_now():
            try:
                answer["response"] = httpx.post(
                    f"http://127.0.0.1:{up.port}/api/admin/jobs/schedules/retention-cleanup/run", timeout=120,
                    headers={"Authorization": f"Bearer {token}"},
                )  # fmt: skip
            except httpx.HTTPError as exc:
                answer["error"] = exc

        request = threading.Thread(target=run_now)
        request.start()
        with psycopg.connect(database_url, autocommit=True) as watcher:
            wait_for(lambda: watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                             "AND query ILIKE 'UPDATE job_schedules%'").fetchone()[0],
                     timeout=60, message="the request to be in flight")  # fmt: skip
        up.process.send_signal(signal.SIGTERM)
        wait_for(lambda: "Handling signal: term" in up.output() and "warm shutdown requested" in up.output(),
                 timeout=60, message="gunicorn and the workers to take the SIGTERM")  # fmt: skip
        assert up.process.poll() is None and not answer
        open_gate(client, "up-held")
    request.join(timeout=120)
    assert up.process.wait(timeout=120) == 0
    assert "error" not in answer and answer["response"].status_code == 201, answer
    assert processes_with("", open_home) == [], "scripts/up left processes behind"
    assert not (open_home / "redis" / "url").exists() and not (open_home / "postgres" / "url").exists()
    output = up.output()
    assert f"admin token: {token}" in output and f"http://127.0.0.1:{up.port}/" in output
    assert "applied migration 0001_job_runs.sql" in output

    # a second start keeps the token and the data, and applies no migration again
    again = Up(open_home, free_port())
    again.wait_ready()
    kept = redis.Redis.from_url((open_home / "redis" / "url").read_text().strip())
    assert kept.get("bullrq-test:kept") == b"yes"
    assert job_status(kept, held.id) == "finished" and len(runs(kept, "up-held", event="end")) == 1  # before the stop
    assert job_status(kept, answer["response"].json()["jobId"]) is not None  # the request's job was enqueued
    with psycopg.connect((open_home / "postgres" / "url").read_text().strip()) as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone() == (len(discover()),)
    assert again.stop() == 0
    assert f"admin token: {token}" in again.output()
    assert "applied migration" not in again.output()
    assert "installing" not in again.output()  # nothing reinstalled
    assert processes_with("", open_home) == []
    assert database_url  # published while it ran
