"""Procfile and docker-compose.yml describe the same processes: web, scheduler and one worker per queue."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib

import httpx
import pytest
import yaml
from rq import Worker

from app.config import PROJECT_ROOT
from app.local.processes import RunProcesses
from app.local.servers import free_port
from app.runtime.enqueue import enqueue
from app.runtime.leases import LEASE
from app.tasks import queue_keys
from app.web.server import GRACEFUL_TIMEOUT
from bench.drill_kit import preload_env
from queues import JOB_KEY_PREFIX, QUEUES, SCHEDULER_LEADER_KEY
from tests.conftest import TOKEN
from tests.fixtures import wait_for
from tests.handlers import open_gate, runs

pytest_plugins = ["tests.worker_processes"]  # the `workers` fixture

INFRASTRUCTURE = {"redis", "postgres"}


def procfile() -> dict[str, str]:
    processes = {}
    for line in (PROJECT_ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, command = line.split(":", 1)
            assert name not in processes, f"Procfile declares {name} twice"
            processes[name.strip()] = command.strip()
    return processes


def compose() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())


def compose_commands() -> dict[str, str]:
    services = compose()["services"]
    return {name: service["command"] for name, service in services.items() if name not in INFRASTRUCTURE}


def program(command: str) -> list[str]:
    """The command without its options: compose adds the bind address and port that a Procfile host supplies."""
    words = shlex.split(command)
    return words[: next((i for i, w in enumerate(words) if w.startswith("-")), len(words))]


def test_procfile_names_are_the_compose_app_services():
    assert set(procfile()) == set(compose_commands())
    assert all("-" not in name for name in procfile())


def test_commands_match():
    proc, comp = procfile(), compose_commands()
    for name in proc:
        assert program(proc[name]) == program(comp[name]), name
        if name != "web":
            assert proc[name] == comp[name], name


def test_compose_lets_every_process_stop_gracefully():
    """`docker compose stop` kills after `stop_grace_period` (10 s by default): a worker gets its queue's job
    timeout to finish the running job, the web app gunicorn's grace for requests in flight."""

    def seconds(service: str) -> int:
        value = compose()["services"][service].get("stop_grace_period", "10s")
        assert re.fullmatch(r"\d+s", value), f"{service}: write stop_grace_period in seconds, not {value!r}"
        return int(value[:-1])

    for name, command in compose_commands().items():
        words = shlex.split(command)
        if words[:2] == ["workers", "run"]:
            assert seconds(name) > QUEUES[words[2]].timeout, name
    assert seconds("web") > GRACEFUL_TIMEOUT


@pytest.mark.parametrize("processes", [procfile(), compose_commands()], ids=["Procfile", "compose"])
def test_every_queue_has_exactly_one_worker_process(processes):
    served = [shlex.split(c)[2:] for c in processes.values() if shlex.split(c)[:2] == ["workers", "run"]]
    assert sorted(q for queues in served for q in queues) == sorted(QUEUES)
    assert all(len(queues) == 1 for queues in served)
    assert {"web", "scheduler"} <= set(processes)


def test_every_command_is_a_declared_console_script():
    scripts = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for command in [*procfile().values(), *compose_commands().values()]:
        assert shlex.split(command)[0] in scripts, command


def test_compose_app_services_share_servers_and_wait_for_them():
    services = compose()["services"]
    assert services["redis"]["image"].startswith("redis:7")
    assert services["postgres"]["image"].startswith("postgres:16")
    assert "healthcheck" in services["redis"] and "healthcheck" in services["postgres"]
    for name in compose_commands():
        env = services[name]["environment"]
        assert env["REDIS_URL"] == "redis://redis:6379/0", name
        assert env["DATABASE_URL"] == "postgresql://bullrq:bullrq@postgres:5432/bullrq", name
        assert env["ADMIN_TOKEN"].startswith("${ADMIN_TOKEN:?"), name
        assert {dep: cond["condition"] for dep, cond in services[name]["depends_on"].items()} == {
            "redis": "service_healthy",
            "postgres": "service_healthy",
        }, name
    assert services["web"]["ports"] == ["8000:8000"]


def test_every_compose_service_has_a_healthcheck_and_a_restart_policy():
    services = compose()["services"]
    for name, service in services.items():
        assert service.get("restart") in ("unless-stopped", "always", "on-failure"), name
        assert service["healthcheck"]["test"], name
    probes = {name: services[name]["healthcheck"]["test"] for name in compose_commands()}
    assert probes.pop("web") == ["CMD", "bullrq", "probe", "web", "--port", "8000"]  # /readyz
    assert probes.pop("scheduler") == ["CMD", "bullrq", "probe", "scheduler"]
    for name, test in probes.items():  # each worker service probes the queue it serves
        assert test == ["CMD", "bullrq", "probe", "worker", *shlex.split(compose_commands()[name])[2:]], name


def test_procfile_compose_and_the_supervisor_run_the_same_processes():
    """scripts/up's processes (app.local.processes.RunProcesses) are the Procfile's: web, scheduler, each queue's
    worker."""
    planned = RunProcesses.planned()
    kinds = {name if RunProcesses.kind(name) != "worker" else RunProcesses.queue_of(name) for name in planned}
    served = {shlex.split(c)[2] for c in procfile().values() if shlex.split(c)[:2] == ["workers", "run"]}
    assert kinds == {"web", "scheduler"} | served
    programs = {"app.cli.main": "bullrq", "app.cli.workers": "workers"}
    for name in planned:
        argv = RunProcesses.command(name)
        assert argv[1] == "-m" and argv[argv.index("--name") + 1] == name
        words = [programs[argv[2]], *argv[3 : argv.index("--name")]]
        entry = name if name in ("web", "scheduler") else RunProcesses.queue_of(name).replace("-", "_")
        assert program(" ".join(words)) == program(procfile()[entry]), name


@pytest.mark.slow
def test_the_probes_of_compose_tell_healthy_from_not(redis_url, database_url, redis_conn, tmp_path):
    """`bullrq probe ...` exits 1 with one line while the process is missing, 0 once it runs."""
    env = {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": database_url, "BULLRQ_HOME": str(tmp_path)}
    bullrq = os.path.join(os.path.dirname(sys.executable), "bullrq")

    def probe(*args):
        return subprocess.run([bullrq, "probe", *args], env=env, capture_output=True, text=True, timeout=60)

    for args in (["worker", "sync"], ["scheduler"], ["web", "--port", str(free_port())]):
        missing = probe(*args)
        assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1, (args, missing.stderr)
    worker = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "workers"), "run", "sync"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for(lambda: probe("worker", "sync").returncode == 0, timeout=30, message="the worker probe")
        assert probe("worker", "reports").returncode == 1
    finally:
        worker.terminate()
        worker.wait(30)


@pytest.mark.slow
def test_honcho_start_brings_the_whole_procfile_up_and_sigterm_stops_it(
    redis_url, database_url, redis_conn, tmp_path, workers
):
    """`honcho start` with given servers: the web app (gunicorn) answers /readyz, every queue gets a worker, the
    scheduler leads. SIGTERM with two jobs running: the one that ends within honcho's 5 s (its KILL_WAIT) completes
    once and no job starts after the signal; the one that does not is SIGKILLed with its worker by honcho, and a
    worker started afterwards takes it back from its lease and completes it: nothing lost, no process left."""
    port = free_port()
    home = tmp_path / "honcho-home"
    env = {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": database_url, "ADMIN_TOKEN": TOKEN,
           "BULLRQ_HOME": str(home), "LOG_FORMAT": "json", "WEB_CONCURRENCY": "1", "PYTHONUNBUFFERED": "1",
           "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}  # fmt: skip
    env = preload_env(env, "tests.handlers")  # the Procfile's workers run the gated test jobs too
    log = tmp_path / "honcho.log"
    with open(log, "wb") as out:
        honcho = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "honcho"), "start", "-p", str(port)],
                                  cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)  # fmt: skip
    running = False  #: both gated jobs are running
    try:
        def ready():
            assert honcho.poll() is None, log.read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, timeout=60, interval=0.5, message="the web process to be ready")
        wait_for(lambda: {q.name for w in Worker.all(connection=redis_conn) for q in w.queues} >= set(QUEUES),
                 timeout=60, interval=0.5, message="a worker on every queue")  # fmt: skip
        wait_for(lambda: redis_conn.exists(SCHEDULER_LEADER_KEY), timeout=30, message="the scheduler to lead")
        stats = httpx.get(f"http://127.0.0.1:{port}/api/admin/workers?action=stats",
                          headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5).json()  # fmt: skip
        assert set(stats["queues"]) == set(QUEUES) and stats["workers"] >= len(QUEUES)
        short = enqueue(redis_conn, "semantics.gated", {"tag": "short", "wait": 120}, {"queue": "harvest"}).id
        behind = enqueue(redis_conn, "semantics.record", {"tag": "behind"}, {"queue": "harvest"}).id
        long = enqueue(redis_conn, "semantics.gated", {"tag": "long", "wait": 120}, {"queue": "embeddings"}).id
        wait_for(lambda: runs(redis_conn, "short") and runs(redis_conn, "long"), timeout=30,
                 message="both gated jobs to start")  # fmt: skip
        running = True
    finally:
        honcho.send_signal(signal.SIGTERM)
        try:
            # the worker has seen the signal before the gate opens: the job behind it must stay queued
            if running:
                seen = re.compile(r"harvest\.1\s+\|.*warm shutdown requested")
                wait_for(lambda: seen.search(log.read_text(errors="replace")), timeout=10,
                         message="the harvest worker to see SIGTERM")  # fmt: skip
                open_gate(redis_conn, "short")
            code = honcho.wait(timeout=60)
        finally:
            if honcho.poll() is None:
                os.killpg(honcho.pid, signal.SIGKILL)
    output = log.read_text(errors="replace")
    assert code in (128 + signal.SIGTERM, -signal.SIGKILL), output[-3000:]  # the status of the first process out
    lines: dict[str, list[str]] = {}
    for line in output.splitlines():  # "21:24:21 web.1 | text"
        match = re.match(r"^\S+ (\w+)\.1\s+\| (.*)$", line)
        if match:
            lines.setdefault(match.group(1), []).append(match.group(2))
    for process in set(procfile()) - {"embeddings"}:  # each stopped on its own terms: gunicorn ends its requests
        stopped = {"web": "Shutting down: Master", "scheduler": "scheduler "}.get(process, "worker ")
        assert any(stopped in line and (process == "web" or ": stopped" in line) for line in lines.get(process, [])), (
            f"{process} did not log a graceful stop"
        )
    assert "sending SIGKILL" in output, output[-3000:]  # honcho's, to the worker whose job outlived KILL_WAIT
    time.sleep(0.5)
    leftover = subprocess.run(["pgrep", "-s", str(honcho.pid)], capture_output=True, text=True).stdout.split()
    assert leftover == [], f"processes left behind: {leftover}"
    assert TOKEN not in output  # the token never reaches a log
    assert all(line.startswith("{") for line in lines["web"]), lines["web"][:5]  # LOG_FORMAT=json: JSON lines only

    def status(job_id: str) -> str:
        return redis_conn.hget(JOB_KEY_PREFIX + job_id, "status").decode()

    assert (status(short), status(behind)) == ("finished", "queued")  # nothing started after SIGTERM
    assert status(long) == "started" and redis_conn.zcard(queue_keys("embeddings").started) == 1  # its lease
    workers.start("embeddings", name="after-honcho")
    open_gate(redis_conn, "long")
    wait_for(lambda: status(long) == "finished", timeout=LEASE + 40, message="the killed job to be taken back")
    assert [len(runs(redis_conn, tag)) for tag in ("short", "long")] == [1, 2]
