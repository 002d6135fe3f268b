"""`bullrq`: enqueue jobs, migrate the database, and run the web app and the scheduler."""

from __future__ import annotations

import functools
import json
import logging
import signal

import click
import psycopg
from redis.exceptions import RedisError

from app.cli.alerts import alerts_group
from app.cli.batches import batches_group
from app.cli.common import EXIT_USAGE, check_eviction, connect_redis, fail, redis_option, settings, user_errors
from app.cli.queues import jobs_group, queues_group
from app.cli.schedules import schedules_group
from app.connections import redis_from_url
from app.errors import ConfigError
from app.logs import configure_logging
from app.runtime.enqueue import PARENT_FAILURE_MODES, PRIORITIES, enqueue
from app.store.migrate import apply_migrations, migration_status


@click.group()
def cli():
    """Bull-style background jobs on Redis and RQ."""


cli.add_command(queues_group)
cli.add_command(jobs_group)
cli.add_command(schedules_group)
cli.add_command(alerts_group)
cli.add_command(batches_group)


@cli.command("enqueue")
@click.argument("task_type")
@click.option("--data", default="{}", show_default=True, help="The job's data as a JSON object.")
@click.option("--queue", default=None, help="Queue for task types that run on any queue (e.g. system.ping).")
@click.option("--priority", default=None, help=f"{' | '.join(PRIORITIES)} or 1 (first) to 10.")
@click.option("--delay", default=None, type=float, help="Seconds to wait before the job may start.")
@click.option("--dedup", default=None, help="Dedup key: while a job with this key is pending, print its id instead.")
@click.option("--depends-on", "depends_on", multiple=True, metavar="JOB_ID",
              help="Wait until this job has completed (repeatable).")
@click.option("--on-parent-failure", type=click.Choice(PARENT_FAILURE_MODES), default=None,
              help="When a parent fails or is canceled: fail (default), cancel, or ignore (run anyway).")
@redis_option
@user_errors
def enqueue_command(task_type, data, queue, priority, delay, dedup, depends_on, on_parent_failure):
    """Enqueue a job of registered type TASK_TYPE and print its id."""
    try:
        payload = json.loads(data)
    except json.JSONDecodeError as exc:
        fail(f"--data is not valid JSON: {exc}", EXIT_USAGE)
    options = {"queue": queue, "delay": delay, "jobId": dedup, "dependsOn": list(depends_on) or None,
               "onParentFailure": on_parent_failure}
    if priority is not None:
        options["priority"] = int(priority) if priority.isdigit() else priority
    config = settings()
    job = enqueue(connect_redis(config), task_type, payload, {k: v for k, v in options.items() if v is not None})
    click.echo(job.id)


@cli.group()
def probe():
    """Health probes for containers (docker compose healthchecks): exit 0 when healthy, else 1 with one line."""


@probe.command("web")
@click.option("--port", default=5000, type=click.IntRange(1, 65535), show_default=True, envvar="PORT")
def probe_web(port):
    """The web app on this host answers /readyz with 200 (Redis and PostgreSQL reachable)."""
    import httpx

    try:
        response = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=3)
    except httpx.HTTPError as exc:
        fail(f"web app on port {port} does not answer: {exc}")
    if response.status_code != 200:
        fail(f"web app on port {port} is not ready: /readyz answered {response.status_code}")
    click.echo("web: ready")


@probe.command("scheduler")
@redis_option
def probe_scheduler():
    """A scheduler holds the lease and completed a tick recently."""
    from app.scheduling.scheduler import liveness

    state = liveness(connect_redis(settings()))
    if not state["ok"]:
        fail(f"scheduler: {state['problem']}")
    click.echo(f"scheduler: {state['leader']} active, last tick {state['last_tick_age']} s ago")


@probe.command("worker")
@click.argument("queue")
@redis_option
def probe_worker(queue):
    """A worker of QUEUE on this host is registered and its heartbeat is recent."""
    import socket
    from datetime import UTC, datetime

    from rq.worker import Worker

    from app.runtime.jobs import SERIALIZER

    connection = connect_redis(settings())
    host = socket.gethostname()
    ages = []
    for worker in Worker.all(connection=connection, serializer=SERIALIZER):
        if worker.hostname == host and queue in worker.queue_names() and worker.last_heartbeat:
            beat = worker.last_heartbeat if worker.last_heartbeat.tzinfo else worker.last_heartbeat.replace(tzinfo=UTC)
            ages.append((datetime.now(UTC) - beat).total_seconds())
    if not ages:
        fail(f"no worker of {queue} registered on {host}")
    if min(ages) > PROBE_HEARTBEAT_AGE:
        fail(f"the workers of {queue} on {host} missed their heartbeats ({min(ages):.0f} s)")
    click.echo(f"{queue}: {len(ages)} worker(s) alive on {host}")


#: seconds without a heartbeat after which `probe worker` calls a worker stuck (heartbeats come every 5 s)
PROBE_HEARTBEAT_AGE = 60


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


def _process_name(func):
    """`--name`: the process's name in the run directory (`app.local.processes` recognises its processes by it)."""

    @click.option("--name", default=None, hidden=True, help="Process name in the run directory.")
    @functools.wraps(func)
    def wrapper(*args, name, **kwargs):
        return func(*args, **kwargs)

    return wrapper


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, type=click.IntRange(1, 65535), show_default=True, envvar="PORT")
@click.option("--dev", is_flag=True, help="Werkzeug's single-process server instead of the production server.")
@_process_name
def web(host, port, dev):
    """Serve the web app (admin API, dashboard, health probes): gunicorn processes that buffer whole requests
    before a thread takes them (waitress); SIGTERM stops it gracefully."""
    from app.alerts.settings import load_alert_settings
    from app.web import create_app

    config = settings()
    configure_logging(config.log_format)
    _migrate()  # under the advisory lock: several web processes may start at once
    try:
        check_eviction(redis_from_url(config.redis_url))
    except RedisError:  # the web app starts without Redis (its /readyz says so)
        pass
    try:
        application = create_app()
        load_alert_settings()  # checked here: each gunicorn worker starts an alert evaluator with them
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    if dev:
        from werkzeug.serving import run_simple

        _start_alerts(config, "web")  # gunicorn starts one per worker process instead (app.web.server)
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
@_process_name
def scheduler():
    """Run a scheduler process: fires schedules.yaml's entries on time (one process active, others stand by)."""
    from app.scheduling.scheduler import Scheduler
    from app.scheduling.schedules import ScheduleError, load_schedules

    config = settings()
    configure_logging(config.log_format)
    try:
        entries = load_schedules(config.schedules_file, default_timezone=config.timezone)
    except ScheduleError as exc:
        fail(str(exc), EXIT_USAGE)
    connection = connect_redis(config)
    check_eviction(connection)
    process = Scheduler(connection, config.database_url, entries)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: process.stop())
    alerts = _start_alerts(config, "scheduler")
    process.run()
    if alerts is not None:
        alerts.stop()


def _start_alerts(config, role: str):
    """This process's candidate alert evaluator (app.alerts.evaluator); a bad alert setting ends the command."""
    from app.alerts.evaluator import start_evaluator

    try:
        return start_evaluator(config.redis_url, config.database_url, role)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)


if __name__ == "__main__":
    cli()
