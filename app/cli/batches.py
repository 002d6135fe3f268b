"""`bullrq batches ...`: create a batch of jobs with callbacks, and follow it."""

from __future__ import annotations

import json

import click

from app.cli.common import EXIT_USAGE, connect_redis, fail, redis_option, settings, user_errors
from app.runtime.flows import batch_from_json, batch_status, create_batch


@click.group("batches")
def batches_group():
    """Create batches of jobs whose callbacks run once they have all ended, and show them."""


@batches_group.command()
@click.argument("source", type=click.File("r"))
@redis_option
@user_errors
def create(source):
    """Create the batch described in SOURCE ("-": standard input), as POST /api/admin/batches takes it:
    {"jobs": [{type, data, options}, ...], "onSuccess": {...}, "onComplete": {...}}. Prints its ids as JSON."""
    try:
        body = json.load(source)
    except json.JSONDecodeError as exc:
        fail(f"{source.name} is not valid JSON: {exc}", EXIT_USAGE)
    batch = create_batch(connect_redis(settings()), **batch_from_json(body))
    click.echo(json.dumps({"batchId": batch.id, "jobIds": batch.job_ids, "callbacks": batch.callbacks}, indent=2))


@batches_group.command()
@click.argument("batch_id")
@redis_option
def show(batch_id):
    """Print batch BATCH_ID as JSON: counts, state and callbacks."""
    shown = batch_status(connect_redis(settings()), batch_id)
    if shown is None:
        fail(f"no batch {batch_id!r} (never created, or ended long ago)", EXIT_USAGE)
    click.echo(json.dumps(shown, indent=2))
