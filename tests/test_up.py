"""`scripts/up` end to end: embedded servers, migrations, web, scheduler and workers; clean stop on SIGTERM."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import httpx
import psycopg
import pytest
import redis

from app.config import PROJECT_ROOT
from app.local.processes import pid_exists
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

    def __init__(self, home: Path | None, port: int, root: Path = PROJECT_ROOT, env: dict | None = None, **popen):
        unset = ("REDIS_URL", "DATABASE_URL", "BULLRQ_THROWAWAY_SERVERS")
        if env is None:  # the test task types too, for gated jobs
            env = preload_env({k: v for k, v in os.environ.items() if k not in unset}, "tests.handlers")
        if home is not None:
            env["BULLRQ_HOME"] = str(home)
        env["PORT"] = str(port)
        self.env, self.port, self.lines = env, port, []
        self.process = subprocess.Popen(
            [str(root / "scripts" / "up")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True, **popen,
        )  # fmt: skip
        threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True).start()

    def wait_banner(self) -> None:
        def banner():
            assert self.process.poll() is None, "scripts/up exited:\n" + self.output()[-3000:]
            return "bullrq is up" in self.output()

        wait_for(banner, timeout=180, interval=0.05, message="the 'up' banner")

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def wait_ready(self) -> None:
        """/readyz answers 200 and the banner is out (it follows the web's first answer: a check of the output
        right after /readyz could run before it)."""

        def ready():
            assert self.process.poll() is None, "scripts/up exited:\n" + "".join(self.lines[-30:])
            return self.get("/readyz")[0] == 200

        wait_for(ready, timeout=120, interval=0.2, message="/readyz to answer 200")
        self.wait_banner()

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
        logs = open_home / "logs"  # scripts/up's children write there, not to its terminal
        wait_for(lambda: "Handling signal: term" in (logs / "web.log").read_text(errors="replace")
                 and "warm shutdown requested" in (logs / "workers" / "embeddings-1.log").read_text(errors="replace"),
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


def _cli_env(up: Up) -> dict:
    return {k: v for k, v in up.env.items() if k != "PORT"}


def _status_rows(env: dict) -> tuple[int, dict]:
    result = run_cli("workers", "status", "--json", env=env)
    report = json.loads(result.stdout) if result.stdout.strip().startswith("{") else {"workers": []}
    return result.returncode, {row["name"]: row for row in report["workers"]}


def _pid_of(home: Path, name: str) -> int | None:
    try:
        return int((home / "pids" / f"{name}.pid").read_text())
    except (OSError, ValueError):
        return None


def _replaced(home: Path, name: str, old: int) -> bool:
    pid = _pid_of(home, name)
    return pid is not None and pid != old and pid_exists(pid)


def test_up_supervises_its_processes_and_the_cli_manages_them(open_home):
    """One model: the CLI sees and acts on scripts/up's processes; each kind of child that is SIGKILLed is back
    within 10 s (a worker's job taken back at once), counted in `workers status` and /metrics; SIGTERM stops all."""
    up = Up(open_home, free_port())
    up.wait_banner()
    # the banner comes once the web app answers, and / leads a person to the pages (through the sign-in)
    assert up.get("/healthz")[0] == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{up.port}/", timeout=5) as response:
        assert response.status == 200 and "/login" in response.url and "next=" in response.url
    token = (open_home / "admin_token").read_text().strip()
    assert f"admin token: {token}  (kept in {open_home / 'admin_token'})" in up.output()
    up.wait_ready()
    env = _cli_env(up)
    client = redis.Redis.from_url((open_home / "redis" / "url").read_text().strip())

    # the CLI sees exactly scripts/up's processes: web, scheduler, every queue's workers, with their logs
    code, rows = _status_rows(env)
    assert code == 0 and {"web", "scheduler"} <= set(rows)
    assert sorted(q for row in rows.values() for q in row["queues"]) == sorted(queue_names())
    assert all(row["alive"] and row["managed"] for row in rows.values())
    for name in ("sync-1", "web", "scheduler"):
        logs = run_cli("workers", "logs", name, env=env)
        assert logs.returncode == 0 and logs.stdout.strip(), name
    stopped = run_cli("workers", "stop", "embeddings", env=env)
    assert "embeddings-1: stopped" in stopped.stdout
    time.sleep(3)  # the supervisor has looked several times: a deliberate stop is not a crash
    assert _pid_of(open_home, "embeddings-1") is None
    assert run_cli("workers", "status", env=env).returncode == 0
    assert "embeddings-1: starting" in run_cli("workers", "start", "embeddings", env=env).stdout

    # SIGKILL one process of each kind, and the local Redis
    job = enqueue(client, "system.ping", {"sleep": 60}, {"queue": "harvest", "attempts": 3})
    wait_for(lambda: client.hget(f"rq:job:{job.id}", "status") == b"started", timeout=30, message="the job")
    victims = {name: _pid_of(open_home, name) for name in ("harvest-1", "scheduler", "web")}
    for pid in victims.values():
        os.kill(pid, signal.SIGKILL)
    for name, pid in victims.items():
        wait_for(lambda name=name, pid=pid: _replaced(open_home, name, pid), timeout=10, message=f"{name} back")
    # taken back at once, not after its 20 s lease: one attempt used, and running again on the new worker
    wait_for(lambda: client.hget(f"rq:job:{job.id}", "retries_left") == b"1", timeout=10, message="the job back")
    # the new worker registered (a worker that finds Redis down as it starts exits, to be restarted later)
    wait_for(lambda: _status_rows(env)[1].get("harvest-1", {}).get("state") in ("idle", "busy"), timeout=60,
             message="the new harvest-1 to register")
    redis_pid_file = open_home / "redis" / "redis.pid"
    redis_pid = int(redis_pid_file.read_text())
    os.kill(redis_pid, signal.SIGKILL)

    def redis_back():
        pid = redis_pid_file.read_text().strip() if redis_pid_file.exists() else ""
        return pid.isdigit() and int(pid) != redis_pid and pid_exists(int(pid))

    wait_for(redis_back, timeout=10, message="Redis back")
    wait_for(lambda: up.get("/readyz")[0] == 200, timeout=60, message="ready again")
    wait_for(lambda: json.loads(up.get("/readyz")[1])["checks"]["scheduler"]["ok"], timeout=30, message="scheduler")

    wait_for(lambda: _status_rows(env)[0] == 0, timeout=60, message="every process alive after the Redis restart")
    code, rows = _status_rows(env)
    assert {name: rows[name]["restarts"] for name in victims} == dict.fromkeys(victims, 1)
    assert "SIGKILL" in rows["harvest-1"]["last_exit"]
    auth = {"Authorization": f"Bearer {token}"}
    request = urllib.request.Request(f"http://127.0.0.1:{up.port}/metrics", headers=auth)
    with urllib.request.urlopen(request, timeout=10) as response:
        metrics = response.read().decode()
    for name in victims:
        assert re.search(rf'bullrq_process_restarts_total{{host="[^"]+",process="{name}"}} 1', metrics), name
    assert "bullrq_scheduler_up 1" in metrics
    assert "local redis: restarted" in up.output() and "harvest-1: restarted" in up.output()

    # a worker started again with the CLI is stopped with the rest
    assert run_cli("workers", "restart", "sync", env=env).returncode == 0
    assert up.stop() == 0
    assert processes_with("", open_home) == [], "scripts/up left processes behind"
    assert not list((open_home / "pids").glob("*.pid"))


def test_token_message_says_where_the_token_came_from(open_home):
    token = "t" * 24
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL", "BULLRQ_THROWAWAY_SERVERS")}
    given = Up(open_home, free_port(), env={**env, "ADMIN_TOKEN": token})
    given.wait_banner()
    assert given.stop() == 0
    assert f"admin token: {token}  (from $ADMIN_TOKEN)" in given.output()
    assert not (open_home / "admin_token").exists()  # no file is claimed, none written


def _clone(target: Path) -> Path:
    """A copy of this working tree (tracked and new files) at `target`, with a .venv of the system's Python 3.11
    that reads this .venv's packages (nothing reinstalled; an interpreter every user can run)."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        source = PROJECT_ROOT / name
        if source.is_file() and not name.startswith(("tests/", "bench/")):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", str(target / ".venv")], check=True)
    packages = next((PROJECT_ROOT / ".venv" / "lib").glob("python3.*/site-packages"))
    (next((target / ".venv" / "lib").glob("python3.*/site-packages")) / "shared.pth").write_text(f"{packages}\n")
    shutil.copy2(PROJECT_ROOT / ".venv" / ".bullrq-installed", target / ".venv" / ".bullrq-installed")
    return target


def _bare_env(clone: Path, home: Path) -> dict:
    """No variable of ours set, no redis-server nor pg_ctl on PATH. PYTHONPATH only makes the shared .venv import
    the clone's code (its editable install points at this tree)."""
    env = {"PATH": str(_bin_without_servers(home / "bin")), "HOME": str(home), "LANG": "C.UTF-8",
           "PYTHONPATH": str(clone)}  # fmt: skip
    return env


def _bin_without_servers(target: Path) -> Path:
    """A directory of links to the machine's /usr/bin and /bin except Redis' and PostgreSQL's commands: the PATH of a
    machine without them, whatever this one has installed."""
    target.mkdir(exist_ok=True)
    for directory in ("/usr/bin", "/bin"):
        for program in Path(directory).iterdir():
            server = program.name.startswith(("redis-", "pg_")) or program.name in ("postgres", "initdb", "psql")
            if not server and not (target / program.name).exists():
                (target / program.name).symlink_to(program)
    assert shutil.which("redis-server", path=str(target)) is None and shutil.which("pg_ctl", path=str(target)) is None
    return target


def _leftovers(*paths: Path) -> list[int]:
    """Live processes whose command line or working directory is inside one of `paths`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or not pid_exists(int(entry.name)):
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if any(str(p) in cmdline or cwd.startswith(str(p)) for p in paths):
            found.append(int(entry.name))
    return found


def _up_then_cli_from_a_subdirectory(clone: Path, env: dict, **popen) -> None:
    home = clone / "var"
    up = Up(None, free_port(), root=clone, env=dict(env), **popen)
    try:
        up.wait_ready()
        assert "bullrq is up" in up.output() and f"kept in {home / 'admin_token'}" in up.output()
        # the CLI, from a directory inside the clone and with no variable, finds the run directory's servers
        cli = subprocess.run(
            [str(clone / ".venv" / "bin" / "python"), "-m", "app.cli.workers", "status", "--json"],
            cwd=clone / "workers", env=env,
            capture_output=True, text=True, timeout=60, **popen,
        )  # fmt: skip
        assert cli.returncode == 0, cli.stdout + cli.stderr
        rows = json.loads(cli.stdout)["workers"]
        assert {"web", "scheduler"} <= {row["name"] for row in rows} and all(row["alive"] for row in rows)
        assert sorted(q for row in rows for q in row["queues"]) == sorted(queue_names())
    finally:
        assert up.stop() == 0, up.output()[-3000:]
    assert "Traceback" not in up.output()


#: an interpreter of the same minor version as .venv's that every user can run (pyenv's lives under /root)
SYSTEM_PYTHON = "/usr/bin/python3"


def _system_python_runs_our_packages() -> bool:
    """Whether SYSTEM_PYTHON imports the product's dependencies from .venv (same minor version; below 3.11.3
    redis-py also wants async_timeout)."""
    if not Path(SYSTEM_PYTHON).exists():
        return False
    packages = next((PROJECT_ROOT / ".venv" / "lib").glob("python3.*/site-packages"))
    probe = f"import sys; sys.path.append({str(packages)!r}); import redis, psycopg, flask, rq, gunicorn"
    return subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True).returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (it creates the plain user)")
def test_the_readme_commands_as_root_in_a_private_home_and_as_a_plain_user(tmp_path):
    """`scripts/up` as root in a clone under a mode-700 home, then as an unprivileged user in its own clone: no
    Redis or PostgreSQL on PATH, no variable set; the CLI works from inside the clone."""
    assert _system_python_runs_our_packages(), f"{SYSTEM_PYTHON} cannot run .venv's packages"
    # as root, in a home like /root (mode 700): PostgreSQL, run as an unprivileged user, keeps its cluster outside
    root_home = tmp_path / "root-home"
    root_home.mkdir(mode=0o700)
    clone = _clone(root_home / "bullrq")
    cluster_file = clone / "var" / "postgres" / "cluster"
    cluster = None
    try:
        _up_then_cli_from_a_subdirectory(clone, _bare_env(clone, root_home))
        assert cluster_file.exists() and stat.S_IMODE(root_home.stat().st_mode) == 0o700
    finally:
        cluster = Path(cluster_file.read_text().strip()) if cluster_file.exists() else None
        leftovers = _leftovers(clone, *([cluster] if cluster else []))
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
        if cluster:
            shutil.rmtree(cluster, ignore_errors=True)
    assert leftovers == [], "scripts/up left processes behind"

    # a plain user, created for the test, in a private home of its own
    user = f"bullrq{os.getpid()}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", user], check=True)
    try:
        entry = pwd.getpwnam(user)
        user_home = Path(tempfile.mkdtemp(prefix="bullrq-user-"))
        user_home.chmod(0o700)
        clone = _clone(user_home / "bullrq")
        subprocess.run(["chown", "-hR", f"{entry.pw_uid}:{entry.pw_gid}", str(user_home)], check=True)
        as_user = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        _up_then_cli_from_a_subdirectory(clone, _bare_env(clone, user_home), **as_user)
        assert not (clone / "var" / "postgres" / "cluster").exists()  # its own files, in its own clone
        leftovers = _leftovers(clone)
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
        assert leftovers == [], "scripts/up left processes behind"
    finally:
        subprocess.run(["userdel", user], capture_output=True)
        shutil.rmtree(user_home, ignore_errors=True)
