"""The wide fuzz run (bench.fuzz, what scripts/fuzz runs) end to end with a handful of examples per operation, against
the suite's throwaway servers: it starts the real web server, seeds it, fuzzes every operation and reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.local.servers import THROWAWAY_FLAG
from bench.fuzz import server_problems

PROJECT = Path(__file__).resolve().parent.parent


def _fuzz(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench.fuzz", *args], cwd=PROJECT, capture_output=True, text=True, timeout=120, env=env
    )


@pytest.mark.slow
def test_a_small_run_fuzzes_every_operation_and_finds_nothing_new(redis_url, database_url, tmp_path):
    env = {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": database_url, THROWAWAY_FLAG: "1"}
    env["TMPDIR"] = str(tmp_path)  # where a failed run keeps its server log
    done = _fuzz("--examples", "3", "--seed", "1", "--json", env=env)
    report = json.loads(done.stdout)

    assert report["failures"] == [] and report["errors"] == [], done.stderr
    assert report["server_problems"] == {}, report["server_problems"]
    assert done.returncode == 0, done.stderr
    assert report["operations"] > 15
    assert report["operations"] == report["documented"] - 1  # all but the one serving the document
    assert report["requests"] >= 3 * report["operations"]
    assert {phase["phase"] for phase in report["phases"]} == {"examples", "coverage", "fuzzing", "stateful"}
    # the seeded ids reach past the 404s: schedules and jobs that exist are read
    assert report["per_operation"]["GET /api/admin/jobs/schedules/{schedule_id}"].get("2xx")
    assert report["per_operation"]["GET /api/admin/jobs/{job_id}"].get("2xx")


def test_refuses_servers_that_are_not_throwaway(redis_url, database_url):
    env = {k: v for k, v in os.environ.items() if k != THROWAWAY_FLAG}
    env.update(REDIS_URL=redis_url, DATABASE_URL=database_url)
    done = _fuzz("--examples", "1", env=env)
    assert done.returncode == 2
    assert "--force" in done.stderr and "Traceback" not in done.stderr


def test_server_problems_are_the_exceptions_of_tracebacks_and_the_error_lines():
    overflow = "psycopg.errors.NumericValueOutOfRange: bigint out of range"
    log = "\n".join([
        "2026-01-02 03:04:05,678 INFO gunicorn.access: 127.0.0.1 \"GET /x HTTP/1.1\" 200 2 1ms",
        "2026-01-02 03:04:05,678 ERROR app.web.errors: request failed",
        "Traceback (most recent call last):",
        '  File "app/store/runs.py", line 74, in list_runs',
        "    rows = conn.execute(query)",
        overflow,
        "2026-01-02 03:04:05,678 ERROR app.web.audit: audit: could not record POST /a by token:ab: bad escape",
        "DETAIL:  \\u0000 cannot be converted to text.",
        "2026-01-02 03:04:05,678 ERROR app.web.audit: audit: could not record PATCH /b by token:ab: bad escape",
    ])  # fmt: skip
    assert server_problems(log) == {
        overflow: [1, overflow],
        "app.web.audit: bad escape": [2, "audit: could not record POST /a by token:ab: bad escape"],
    }
