"""The dev entry point behind `scripts/up`: the whole system in the foreground, on embedded servers when needed.

With REDIS_URL / DATABASE_URL unset it starts a local Redis and PostgreSQL under the run directory (data kept
between runs), applies migrations, then starts the web app, the scheduler and every queue's worker processes as
processes of the run directory (`app.local.processes`: the `workers` CLI sees and manages the same ones) and supervises
them (`app.local.supervisor`): what crashes is restarted. Ctrl-C or SIGTERM stops every process of the run directory
(running jobs finish first, workers added with `workers start` included), then the servers it started.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import urllib.error
import urllib.request

import psycopg

from app.config import ensure_admin_token, load_settings
from app.errors import BullrqError
from app.local.processes import RunProcesses, pid_exists
from app.local.servers import EmbeddedPostgres, EmbeddedRedis
from app.local.supervisor import TICK, Supervisor
from app.logs import configure_logging
from app.store.migrate import apply_migrations

logger = logging.getLogger("bullrq.up")

#: seconds the children get to finish their jobs after Ctrl-C before they are killed
STOP_TIMEOUT = 30
#: seconds to wait for the web app to answer before the "up" banner is printed anyway, with a warning
WEB_TIMEOUT = 120


class _Stop(Exception):
    pass


def _raise_stop(signum, frame):
    raise _Stop(signal.Signals(signum).name)


def _web_answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _token_origin(env: dict, settings) -> str:
    """Where the admin token came from, in words."""
    for name in ("ADMIN_TOKEN", "BULL_BOARD_ACCESS_TOKEN"):
        if os.environ.get(name, "").strip():
            return f"from ${name}"
    if settings.admin_token:
        return "from .env"
    return f"kept in {settings.home.token_file}"


def _take_over(fleet: RunProcesses) -> None:
    """Refuse to run twice on one run directory; a background supervisor (of `workers start`) hands over."""
    other = fleet.supervisor_pid()
    if other is None:
        return
    if fleet.supervisor_state().get("mode") == "up" and fleet.supervisor_state().get("pid") == other:
        raise BullrqError(f"scripts/up already runs for {fleet.home.root} (pid {other})")
    os.kill(other, signal.SIGUSR1)  # the background supervisor leaves, its processes stay: ours to supervise now
    deadline = time.monotonic() + 10
    while pid_exists(other) and time.monotonic() < deadline:
        time.sleep(0.05)


def main() -> int:
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    configure_logging()
    started_servers = []
    supervisor = None
    fleet = None
    try:
        settings = load_settings()
        fleet = RunProcesses(settings.home)
        _take_over(fleet)
        settings.home.root.mkdir(parents=True, exist_ok=True)
        fleet.supervisor_pid_file.write_text(f"{os.getpid()}\n")
        env = dict(os.environ)
        # a Redis or PostgreSQL named by the environment or `.env` (a URL, a host, the sentinels) is used as is
        servers = []
        if settings.redis_url_source != "env":
            redis = EmbeddedRedis(settings.home.redis)
            env["REDIS_URL"] = redis.start()
            started_servers.append(redis)
            servers.append(("redis", redis))
            logger.info("local Redis on port %d (data in %s)", redis.port, redis.dir)
        if settings.database_url_source != "env":
            postgres = EmbeddedPostgres(settings.home.postgres)
            env["DATABASE_URL"] = postgres.start()
            started_servers.append(postgres)
            servers.append(("postgres", postgres))
            logger.info("local PostgreSQL on port %d (data in %s)", postgres.port, postgres.data)
        settings = load_settings(env)
        for migration in apply_migrations(settings.database_url):
            logger.info("applied migration %s", migration.path.name)
        env["ADMIN_TOKEN"] = ensure_admin_token(settings)
        port = int(env.get("PORT") or 5000)
        supervisor = Supervisor(settings.home, env, port, servers=servers, mode="up")
        planned = fleet.planned()
        started = supervisor.start(planned)
        adopted = [name for name in planned if name not in started]
        if adopted:
            logger.info("already running, now supervised: %s", ", ".join(adopted))
        deadline = time.monotonic() + WEB_TIMEOUT
        while not _web_answers(port):
            if time.monotonic() > deadline:
                logger.warning("the web app does not answer on port %d yet: see `workers logs web`", port)
                break
            supervisor.tick()
            time.sleep(0.1)
        workers = len(planned) - 2
        print(f"\nbullrq is up: {workers} workers, scheduler, web app at http://127.0.0.1:{port}/", flush=True)
        print(f"admin token: {env['ADMIN_TOKEN']}  ({_token_origin(env, settings)})", flush=True)
        print(f"logs: {settings.home.logs} (`workers logs NAME`); `workers status` shows every process", flush=True)
        print("Ctrl-C stops everything.\n", flush=True)
        while True:
            supervisor.tick()
            time.sleep(TICK)
    except _Stop as stop:
        logger.info("%s received: stopping", stop)
        return 0
    except (BullrqError, psycopg.OperationalError) as exc:
        logger.error("%s", exc)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if fleet is not None and fleet.supervisor_pid() == os.getpid():
            (supervisor or Supervisor(fleet.home, dict(os.environ))).stop_all(STOP_TIMEOUT)
            fleet.supervisor_pid_file.unlink(missing_ok=True)
        for server in reversed(started_servers):
            server.stop()
        logger.info("stopped")


if __name__ == "__main__":
    sys.exit(main())
