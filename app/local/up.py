"""The dev entry point behind `scripts/up`: the whole system in the foreground, on embedded servers when needed.

With REDIS_URL / DATABASE_URL unset it starts a local Redis and PostgreSQL under the run directory (data kept
between runs), applies migrations, then runs the web app, the scheduler and every queue's worker processes as
children. Ctrl-C or SIGTERM stops the children (running jobs finish first), then the servers it started.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import psycopg

from app.config import ensure_admin_token, load_settings
from app.errors import BullrqError
from app.local.servers import EmbeddedPostgres, EmbeddedRedis
from app.logs import configure_logging
from app.runtime.worker import worker_command, worker_processes
from app.store.migrate import apply_migrations
from queues import QUEUES

logger = logging.getLogger("bullrq.up")

#: seconds the children get to finish their jobs after Ctrl-C before they are killed
STOP_TIMEOUT = 30


def _children(port: int) -> list[tuple[str, list[str]]]:
    python = sys.executable
    children = [
        ("web", [python, "-m", "app.cli.main", "web", "--port", str(port)]),
        ("scheduler", [python, "-m", "app.cli.main", "scheduler"]),
    ]
    return children + [(name, worker_command(queue, name)) for name, queue in worker_processes(list(QUEUES))]


class _Stop(Exception):
    pass


def _raise_stop(signum, frame):
    raise _Stop(signal.Signals(signum).name)


def _stop_children(running: dict[str, subprocess.Popen]) -> None:
    for process in running.values():
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for name, process in running.items():
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop in %d s: killed", name, STOP_TIMEOUT)
        try:
            os.killpg(process.pid, signal.SIGKILL)  # leftovers of the group (forked children)
        except ProcessLookupError:
            pass
        process.wait()


def main() -> int:
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    configure_logging()
    started_servers = []
    running: dict[str, subprocess.Popen] = {}
    try:
        settings = load_settings()
        env = dict(os.environ)
        # a Redis or PostgreSQL named by the environment or `.env` (a URL, a host, the sentinels) is used as is
        if settings.redis_url_source != "env":
            redis = EmbeddedRedis(settings.home.redis)
            env["REDIS_URL"] = redis.start()
            started_servers.append(redis)
            logger.info("local Redis on port %d (data in %s)", redis.port, redis.dir)
        if settings.database_url_source != "env":
            postgres = EmbeddedPostgres(settings.home.postgres)
            env["DATABASE_URL"] = postgres.start()
            started_servers.append(postgres)
            logger.info("local PostgreSQL on port %d (data in %s)", postgres.port, postgres.dir)
        settings = load_settings(env)
        for migration in apply_migrations(settings.database_url):
            logger.info("applied migration %s", migration.path.name)
        env["ADMIN_TOKEN"] = ensure_admin_token(settings)
        port = int(env.get("PORT", "5000"))
        for name, argv in _children(port):
            running[name] = subprocess.Popen(argv, env=env, start_new_session=True, stdin=subprocess.DEVNULL)
        print(f"\nbullrq is up: {len(running) - 2} workers, scheduler, web app at http://127.0.0.1:{port}/", flush=True)
        print(f"admin token: {env['ADMIN_TOKEN']}  (kept in {settings.home.token_file})", flush=True)
        print("Ctrl-C stops everything.\n", flush=True)
        while True:
            for name, process in list(running.items()):
                if process.poll() is not None:
                    logger.error("%s exited with status %s", name, process.returncode)
                    del running[name]
            if not running:
                return 1
            time.sleep(0.5)
    except _Stop as stop:
        logger.info("%s received: stopping", stop)
        return 0
    except (BullrqError, psycopg.OperationalError) as exc:
        logger.error("%s", exc)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _stop_children(running)
        for server in reversed(started_servers):
            server.stop()
        logger.info("stopped")


if __name__ == "__main__":
    sys.exit(main())
