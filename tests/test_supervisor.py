"""The supervisor of a run directory with real processes: a process that crashes at every start is restarted with
a growing backoff, never hammered, and reported as crash looping by `workers status`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from datetime import datetime

import pytest

from app.local.processes import pid_exists
from app.local.servers import free_port
from app.local.supervisor import CRASH_LOOP, backoff
from tests.fixtures import run_cli, wait_for

pytestmark = pytest.mark.slow


def test_a_crash_loop_backs_off_and_is_reported(isolated_env, redis_url):
    home = isolated_env
    (home / "pids").mkdir(parents=True)
    gone = subprocess.Popen(["true"])
    gone.wait()
    (home / "pids" / "sync-1.pid").write_text(f"{gone.pid}\n")  # a worker that died; each restart dies again:
    broken = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}  # its Redis is not there
    (home / "logs").mkdir()
    with open(home / "logs" / "supervisor.log", "ab") as log:  # where `workers start` sends its output
        supervisor = subprocess.Popen([sys.executable, "-m", "app.local.supervisor"], env=broken, stdout=log,
                                      stderr=subprocess.STDOUT)  # fmt: skip
    try:
        state_file = home / "supervisor.json"

        def looping():
            assert supervisor.poll() is None
            try:
                track = json.loads(state_file.read_text())["processes"]["sync-1"]
            except (OSError, ValueError, KeyError):
                return None
            return track if track["restarts"] >= CRASH_LOOP and track["crash_loop"] else None

        track = wait_for(looping, timeout=90, interval=0.2, message="a crash loop")
        assert "exited with status 1" in track["last_exit"]

        # restarts come after a backoff that doubles with each crash in a row (never back to back)
        log = (home / "logs" / "supervisor.log").read_text()
        times = [datetime.strptime(t, "%Y-%m-%d %H:%M:%S,%f")
                 for t in re.findall(r"^(\S+ \S+) .*sync-1: restarted", log, re.M)]  # fmt: skip
        assert len(times) >= CRASH_LOOP
        for n, (before, after) in enumerate(zip(times, times[1:], strict=False), start=2):
            assert (after - before).total_seconds() >= backoff(n) * 0.9, (n, times)
        assert "crash loop" in log

        # reported: `workers status` (against a Redis that answers) exits 1 naming the crash loop
        report = run_cli("workers", "status", "--json")
        assert report.returncode == 1
        body = json.loads(report.stdout)
        row = {r["name"]: r for r in body["workers"]}["sync-1"]
        assert row["restarts"] >= CRASH_LOOP and row["last_exit"] and body["supervisor"]["pid"] == supervisor.pid
        if not row["alive"]:  # between two restarts (the usual state): dead, with the wait before the next one
            assert row["crash_loop"] and body["dead"] == ["sync-1"] and "crash loop" in report.stderr
    finally:
        supervisor.send_signal(signal.SIGTERM)  # stops what it supervises, then exits
        assert supervisor.wait(60) == 0
    assert not list((home / "pids").glob("*.pid")) and not pid_exists(supervisor.pid)


def test_a_killed_child_is_reported_by_its_signal(isolated_env):
    """A child SIGKILLed is reported as killed by SIGKILL, every time: the supervisor can see it gone (its command
    line already empty while the kernel tears it down) a moment before it can be reaped."""
    from app.config import load_settings
    from app.local import processes
    from app.local.processes import spawn_child
    from app.local.supervisor import Supervisor

    supervisor = Supervisor(load_settings().home, dict(os.environ))
    daemon = supervisor.fleet.daemon("scheduler")  # not a worker: no job to take back
    big = "import time; b = bytearray(300 << 20); time.sleep(60)"  # a large memory makes the teardown longer
    for attempt in range(10):
        child = spawn_child(daemon, [sys.executable, "-c", big, "--name", "scheduler"])
        supervisor.children[child.pid] = child
        wait_for(lambda: (processes.rss_bytes(child.pid) or 0) > 300 << 20, timeout=10, message="the child")
        os.kill(child.pid, signal.SIGKILL)
        track = wait_for(lambda: _crash_seen(supervisor, daemon), timeout=10, interval=0, message="the crash")
        assert track.last_exit == "was killed by SIGKILL", attempt
        supervisor.tracks.clear()


def _crash_seen(supervisor, daemon):
    supervisor._check(daemon)
    track = supervisor.tracks.get(daemon.name)
    return track if track and track.last_exit else None
