"""Real worker processes for the semantics tests: `workers run QUEUES --name N` with the test handlers loaded.

Use the `workers` fixture (`pytest_plugins = ["tests.worker_processes"]` in the test module):
`workers.start("harvest", name="h-1")` returns the process once it has registered in Redis; every process still
running at the end of the test is stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from app.runtime.worker import find_rq_worker
from bench.drill_kit import stop_all
from tests.fixtures import wait_for

PROJECT = Path(__file__).resolve().parent.parent
#: the worker CLI, with the test handlers registered first (worker processes import only the workers package)
LAUNCHER = "import tests.handlers; from app.cli.workers import cli; cli()"


class WorkerProcesses:
    """The worker processes of one test."""

    def __init__(self, connection: redis.Redis, logs: Path, **env: str):
        self.connection = connection
        self.logs = logs
        self.env = env  #: settings of the processes over the suite's (REDIS_URL of a server of the test's own)
        self.procs: dict[str, subprocess.Popen] = {}

    def start(
        self, *queues: str, name: str, burst: bool = False, wait: bool = True, wrap: list[str] = ()
    ) -> subprocess.Popen:
        """Start a worker process serving `queues`; with `wait`, return once it has registered in Redis. `wrap`
        runs it under another command (`unshare --pid --fork ...`: pid 1, as in a container)."""
        argv = [*wrap, sys.executable, "-c", LAUNCHER, "run", *queues, "--name", name]
        if burst:
            argv.append("--burst")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        with open(self.logs / f"{name}.log", "ab") as log:  # the child writes to its own copy of the descriptor
            proc = subprocess.Popen(argv, cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        if wait and not burst:
            self.wait_registered(name)
        return proc

    def wait_registered(self, name: str, timeout: float = 20) -> None:
        proc = self.procs[name]

        def registered():
            if proc.poll() is not None:
                raise AssertionError(f"worker {name} exited with {proc.returncode}:\n{self.log(name)}")
            return find_rq_worker(self.connection, proc.pid) is not None

        wait_for(registered, timeout=timeout, message=f"worker {name} to register")

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def alive(self, name: str) -> bool:
        return self.procs[name].poll() is None

    def stop(self, name: str, timeout: float = 15) -> int:
        """Warm shutdown (SIGTERM); returns the exit status."""
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=timeout)

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.kill()
        proc.wait(timeout=10)

    def wait_exit(self, name: str, timeout: float = 30) -> int:
        return self.procs[name].wait(timeout=timeout)

    def close(self) -> None:
        stop_all(self.procs.values(), grace=10)


@pytest.fixture
def workers(redis_conn, tmp_path):
    """Start real worker processes; all are stopped at the end of the test."""
    logs = tmp_path / "worker-logs"
    logs.mkdir()
    pool = WorkerProcesses(redis_conn, logs)
    yield pool
    pool.close()
