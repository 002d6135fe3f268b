"""The benchmark end to end in its quick form, against the suite's throwaway Redis: counts only, never timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from app.local.servers import THROWAWAY_FLAG
from bench.run import QUICK

pytestmark = pytest.mark.slow


def test_quick_bench_runs_every_job_it_asks_for(redis_url, database_url):
    env = {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": database_url, THROWAWAY_FLAG: "1"}
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--json"], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)

    sections = report["sections"]
    assert [(s["queue"], s["workers"]) for s in sections] == [
        ("harvest", 0), ("harvest", 0), ("harvest", 1), ("harvest", 1), ("harvest", 2), ("sync", 2), ("documents", 1),
    ]  # fmt: skip
    assert [s["requested"] for s in sections[:5]] == [QUICK.jobs] * 5
    assert 0 < sections[5]["requested"] <= QUICK.jobs  # a rate limit on sync cuts its run to fit the time budget
    assert sections[6]["requested"] == QUICK.fork_jobs
    for section in sections:
        assert section["jobs"] == section["requested"], section
        assert section["seconds"] > 0 and section["rate"] > 0, section

    latency = report["latency"]
    assert latency["requested"] == QUICK.samples
    assert latency["samples"] == QUICK.samples
    assert all(latency[p] > 0 for p in ("p50", "p95", "p99", "max")), latency

    # plain RQ measured in the same run, every figure taken (a worker that ran nothing would have timed out)
    assert all(value > 0 for value in report["rq_baseline"].values()), report["rq_baseline"]
    # the web section: every creation answered 201 by the real server (a failure would have ended the run)
    assert report["web"]["requests"] == QUICK.web_requests and report["web"]["rate"] > 0, report["web"]


def test_refuses_a_redis_that_is_not_throwaway(redis_url):
    env = {k: v for k, v in os.environ.items() if k != THROWAWAY_FLAG}
    env["REDIS_URL"] = redis_url
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick"], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 2
    assert "--flush" in done.stderr and "Traceback" not in done.stderr
