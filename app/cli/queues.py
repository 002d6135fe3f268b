"""`bullrq queues ...` and `bullrq jobs ...`: Bull's queue and job controls from the shell."""

from __future__ import annotations

import json

import click

from app.cli.common import EXIT_USAGE, connect_redis, fail, redis_option, settings, user_errors
from app.runtime import control
from app.runtime.jobs import describe_job, fetch_job
from app.runtime.stats import queue_stats
from app.tasks import get_queue_spec


def _queue(name: str) -> str:
    return get_queue_spec(name).name  # UnknownQueueError: exit 2 through user_errors


@click.group("queues")
def queues_group():
    """Inspect and control queues (pause, resume, retry failed jobs, clean, empty)."""


@queues_group.command()
@click.option("--json", "as_json", is_flag=True, help="Print the whole stats document as JSON.")
@redis_option
def stats(as_json):
    """Show each queue's jobs by state (deferred: waiting for their parents or batch), pause state and workers."""
    report = queue_stats(connect_redis(settings()))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    columns = ("waiting", "active", "delayed", "deferred", "completed", "failed", "workers")
    click.echo(f"{'QUEUE':<15}" + "".join(f"{c.upper():>10}" for c in columns) + "  PAUSED")
    for name, row in report["queues"].items():
        cells = "".join(f"{row[c]:>10}" for c in columns)
        click.echo(f"{name:<15}{cells}  {'yes' if row['paused'] else 'no'}")


@queues_group.command()
@click.argument("queue")
@redis_option
@user_errors
def pause(queue):
    """Pause QUEUE on every worker (jobs still enqueue; running jobs finish)."""
    control.pause(connect_redis(settings()), _queue(queue))
    click.echo(f"{queue}: paused")


@queues_group.command()
@click.argument("queue")
@redis_option
@user_errors
def resume(queue):
    """Resume QUEUE."""
    control.resume(connect_redis(settings()), _queue(queue))
    click.echo(f"{queue}: resumed")


@queues_group.command("retry-failed")
@click.argument("queue")
@click.option("--id", "job_ids", multiple=True, help="Only this failed job (repeatable); default: all of them.")
@redis_option
@user_errors
def retry_failed(queue, job_ids):
    """Put failed jobs of QUEUE back to wait, with their attempts reset."""
    requeued = control.retry_failed(connect_redis(settings()), _queue(queue), list(job_ids) or None)
    click.echo(f"{queue}: {len(requeued)} job(s) requeued")


@queues_group.command()
@click.argument("queue")
@click.option("--state", type=click.Choice(control.CLEANABLE), default="completed", show_default=True)
@click.option("--grace", type=click.FloatRange(min=0), default=0, show_default=True,
              help="Only jobs that ended more than this many seconds ago.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Delete at most this many.")
@redis_option
@user_errors
def clean(queue, state, grace, limit):
    """Delete QUEUE's jobs in STATE older than the grace period."""
    removed = control.clean(connect_redis(settings()), _queue(queue), state, grace, limit)
    click.echo(f"{queue}: {removed} {state} job(s) deleted")


@queues_group.command()
@click.argument("queue")
@click.option("--force", is_flag=True, help="Required unless DEBUG is on: this deletes waiting jobs.")
@redis_option
@user_errors
def empty(queue, force):
    """Delete every waiting and delayed job of QUEUE."""
    config = settings()
    if not (force or config.debug):
        fail("emptying a queue deletes its waiting jobs: pass --force (or run with DEBUG=1)", EXIT_USAGE)
    removed = control.empty(connect_redis(config), _queue(queue))
    click.echo(f"{queue}: {removed} job(s) deleted")


@click.group("jobs")
def jobs_group():
    """Inspect and cancel jobs."""


@jobs_group.command()
@click.argument("job_id")
@redis_option
def show(job_id):
    """Print job JOB_ID as JSON: type, queue, state, progress, attempts, result or error."""
    job = fetch_job(job_id, connect_redis(settings()))
    if job is None:
        fail(f"no job {job_id!r} (never created, or expired)", EXIT_USAGE)
    click.echo(json.dumps(describe_job(job), indent=2, default=str))


@jobs_group.command()
@click.argument("job_id")
@redis_option
@user_errors
def cancel(job_id):
    """Cancel job JOB_ID: a waiting or delayed job at once, a running one by its worker."""
    click.echo(f"{job_id}: {control.cancel(connect_redis(settings()), job_id)}")
