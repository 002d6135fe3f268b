"""`bullrq`: enqueue jobs, migrate the database, and run the web app and the scheduler."""

from __future__ import annotations

import json
import logging
import signal

import click
import psycopg

from app.cli.common import EXIT_USAGE, connect_redis, fail, redis_option, settings, user_errors
from app.cli.queues import jobs_group, queues_group
from app.cli.schedules import schedules_group
from app.enqueue import PRIORITIES, enqueue
from app.errors import ConfigError
from app.logs import configure_logging
from app.migrate import apply_migrations, migration_status


@click.group()
def cli():
    """Bull-style background jobs on Redis and RQ."""


cli.add_command(queues_group)
cli.add_command(jobs_group)
cli.add_command(schedules_group)


@cli.command("enqueue")
@click.argument("task_type")
@click.option("--data", default="{}", show_default=True, help="The job's data as a JSON object.")
@click.option("--queue", default=None, help="Queue for task types that run on any queue (e.g. system.ping).")
@click.option("--priority", default=None, help=f"{' | '.join(PRIORITIES)} or 1 (first) to 10.")
@click.option("--delay", default=None, type=float, help="Seconds to wait before the job may start.")
@click.option("--dedup", default=None, help="Dedup key: while a job with this key is pending, print its id instead.")
@redis_option
@user_errors
def enqueue_command(task_type, data, queue, priority, delay, dedup):
    """Enqueue a job of registered type TASK_TYPE and print its id."""
    try:
        payload = json.loads(data)
    except json.JSONDecodeError as exc:
        fail(f"--data is not valid JSON: {exc}", EXIT_USAGE)
    options = {"queue": queue, "delay": delay, "jobId": dedup}
    if priority is not None:
        options["priority"] = int(priority) if priority.isdigit() else priority
    config = settings()
    job = enqueue(connect_redis(config), task_type, payload, {k: v for k, v in options.items() if v is not None})
    click.echo(job.id)


@cli.group()
def db():
    """Manage the PostgreSQL schema."""


def _database_url() -> str:
    return settings().database_url


def _migrate() -> list:
    """Apply pending migrations; an unreachable PostgreSQL ends the command with one line."""
    try:
        return apply_migrations(_database_url())
    except psycopg.OperationalError as exc:
        fail(f"PostgreSQL is unreachable: {str(exc).strip().splitlines()[0]}")


@db.command()
def migrate():
    """Apply the migrations not applied yet (safe to run any number of times, from several machines at once)."""
    configure_logging(level=logging.WARNING)
    applied = _migrate()
    for migration in applied:
        click.echo(f"applied {migration.path.name}")
    click.echo(f"{len(applied)} migration(s) applied; schema up to date")


@db.command("status")
def db_status():
    """List the migrations and whether each is applied."""
    try:
        rows = migration_status(_database_url())
    except psycopg.OperationalError as exc:
        fail(f"PostgreSQL is unreachable: {str(exc).strip().splitlines()[0]}")
    for migration, applied in rows:
        click.echo(f"{'applied' if applied else 'pending':<8} {migration.path.name}")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, type=click.IntRange(1, 65535), show_default=True, envvar="PORT")
@click.option("--dev", is_flag=True, help="Werkzeug's single-process server instead of the production server.")
def web(host, port, dev):
    """Serve the web app (admin API, dashboard, health probes): gunicorn processes that buffer whole requests
    before a thread takes them (waitress); SIGTERM stops it gracefully."""
    from app.web import create_app

    config = settings()
    configure_logging(config.log_format)
    _migrate()  # under the advisory lock: several web processes may start at once
    try:
        application = create_app()
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    if dev:
        from werkzeug.serving import run_simple

        run_simple(host, port, application, threaded=True, use_reloader=False)
        return
    from app.web.server import WebServer

    try:
        server = WebServer(application, host, port, config.log_format)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    server.run()


@cli.command()
@redis_option
def scheduler():
    """Run a scheduler process: fires schedules.yaml's entries on time (one process active, others stand by)."""
    from app.scheduler import Scheduler
    from app.schedules import ScheduleError, load_schedules

    config = settings()
    configure_logging(config.log_format)
    try:
        entries = load_schedules(config.schedules_file, default_timezone=config.timezone)
    except ScheduleError as exc:
        fail(str(exc), EXIT_USAGE)
    process = Scheduler(connect_redis(config), config.database_url, entries)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: process.stop())
    process.run()


if __name__ == "__main__":
    cli()
