"""`bullrq schedules ...`: the recurring entries, their state, and operators' changes."""

from __future__ import annotations

import json

import click
import psycopg

from app.cli.common import EXIT_USAGE, connect_redis, fail, redis_option, settings
from app.scheduling import schedule_store
from app.scheduling.cron import CronError
from app.store.db import connect
from app.store.migrate import apply_migrations
from app.store.runs import RunFilter, list_runs


def _db() -> psycopg.Connection:
    url = settings().database_url
    try:
        apply_migrations(url)
        return connect(url, autocommit=True)
    except psycopg.OperationalError as exc:
        fail(f"PostgreSQL is unreachable: {str(exc).strip().splitlines()[0]}")


def _operate(call, *args, **kwargs):
    try:
        return call(*args, **kwargs)
    except (schedule_store.UnknownScheduleError, CronError) as exc:
        fail(str(exc), EXIT_USAGE)


def _on_entry(operation, schedule_id: str, **changes) -> None:
    """Run a schedule_store operation on one entry and print the entry as it is afterwards."""
    with _db() as conn:
        _show(_operate(operation, conn, schedule_id, **changes))


def _when(moment) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z") if moment else "-"


def _show(row: dict) -> None:
    click.echo(json.dumps({k: v for k, v in row.items()}, indent=2, default=str))


@click.group("schedules")
def schedules_group():
    """Recurring entries: schedules.yaml's declarations with their run-time state and overrides."""


@schedules_group.command("list")
@click.option("--json", "as_json", is_flag=True)
def list_command(as_json):
    """List every entry: declared and effective cron, state, last and next run."""
    with _db() as conn:
        rows = schedule_store.list_schedules(conn)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        click.echo("no schedules yet (the scheduler loads schedules.yaml when it starts)")
    for row in rows:
        override = " (override)" if row["cron_override"] or row["timezone_override"] else ""
        click.echo(
            f"{row['id']:<22} {'on ' if row['effective_enabled'] else 'off'} {row['effective_cron']:<16} "
            f"{row['effective_timezone']:<18}{override} last {row['last_status']:<8} {_when(row['last_run_at'])}  "
            f"next {_when(row['next_run_at'])}  runs {row['total_runs']}"
        )


@schedules_group.command()
@click.argument("schedule_id")
def show(schedule_id):
    """Print entry SCHEDULE_ID with its state as JSON."""
    _on_entry(schedule_store.get_schedule, schedule_id)


@schedules_group.command()
@click.argument("schedule_id")
def enable(schedule_id):
    """Switch entry SCHEDULE_ID on (until cleared)."""
    _on_entry(schedule_store.set_overrides, schedule_id, enabled=True)


@schedules_group.command()
@click.argument("schedule_id")
def disable(schedule_id):
    """Switch entry SCHEDULE_ID off (until cleared)."""
    _on_entry(schedule_store.set_overrides, schedule_id, enabled=False)


@schedules_group.command("set-cron")
@click.argument("schedule_id")
@click.argument("cron")
def set_cron(schedule_id, cron):
    """Fire entry SCHEDULE_ID on CRON instead of the declared one (until cleared)."""
    _on_entry(schedule_store.set_overrides, schedule_id, cron=cron)


@schedules_group.command("set-timezone")
@click.argument("schedule_id")
@click.argument("timezone")
def set_timezone(schedule_id, timezone):
    """Read entry SCHEDULE_ID's cron in TIMEZONE (until cleared)."""
    _on_entry(schedule_store.set_overrides, schedule_id, timezone=timezone)


@schedules_group.command()
@click.argument("schedule_id")
def clear(schedule_id):
    """Drop entry SCHEDULE_ID's run-time overrides: back to schedules.yaml."""
    _on_entry(schedule_store.clear_overrides, schedule_id)


@schedules_group.command()
@click.argument("schedule_id")
def reset(schedule_id):
    """Free entry SCHEDULE_ID when its run is stuck (the run is marked failed)."""
    _on_entry(schedule_store.reset, schedule_id)


@schedules_group.command()
@click.argument("schedule_id")
@redis_option
def run(schedule_id):
    """Run entry SCHEDULE_ID now, outside its cron (refused while a run of it is going)."""
    redis = connect_redis(settings())
    with _db() as conn:
        row = _operate(schedule_store.get_schedule, conn, schedule_id)
        job_id = schedule_store.fire(conn, redis, row, slot=None, next_run_at=None)
    if job_id is None:
        fail(f"schedule {schedule_id!r} is running already (job {row['current_job_id']}); try again later")
    click.echo(job_id)


@schedules_group.command()
@click.argument("schedule_id")
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
def history(schedule_id, limit):
    """The latest runs of entry SCHEDULE_ID."""
    with _db() as conn:
        _operate(schedule_store.get_schedule, conn, schedule_id)
        runs = list_runs(conn, RunFilter(schedule_id=schedule_id), limit=limit)["runs"]
    for run in runs:
        click.echo(
            f"{_when(run['started_at'])}  {run['status']:<10} attempt {run['attempt']}  "
            f"{run['duration_ms'] or 0:>9.1f} ms  {run['job_id']}  {run['error_message'] or ''}"
        )
    if not runs:
        click.echo("no runs yet")
