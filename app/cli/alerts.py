"""`bullrq alerts ...`: the open and recent alerts, and a test message to every channel of ALERT_CHANNELS."""

from __future__ import annotations

import json

import click
import psycopg

from app.alerts import store
from app.alerts.delivery import send_test
from app.alerts.settings import load_alert_settings
from app.cli.common import EXIT_USAGE, connect_redis, fail, redis_option, settings
from app.errors import ConfigError
from app.store.db import connect
from app.store.migrate import apply_migrations


@click.group("alerts")
def alerts_group():
    """Alerts: what is wrong now, and whether the channels work."""


@alerts_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the alerts as JSON.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(0, 1000),
              help="Recent (cleared) alerts shown at most.")  # fmt: skip
def list_command(as_json, limit):
    """List the open alerts, those about to open, and those cleared in the last 24 hours."""
    url = settings().database_url
    try:
        apply_migrations(url)
        with connect(url, autocommit=True) as conn:
            alerts = store.list_alerts(conn, recent_limit=limit)
    except psycopg.OperationalError as exc:
        fail(f"PostgreSQL is unreachable: {str(exc).strip().splitlines()[0]}")
    if as_json:
        click.echo(json.dumps(alerts, indent=2))
        return
    for title, rows, moment in (("open", alerts["open"], "openedAt"), ("pending", alerts["pending"], "firstSeenAt"),
                                ("cleared (24 h)", alerts["recent"], "clearedAt")):  # fmt: skip
        if not rows and title != "open":
            continue
        click.secho(f"{title}: {len(rows)}", bold=True)
        for row in rows:
            click.echo(f"  {row[moment][:19].replace('T', ' ')}  {row['key']:<40} {row['summary']}")
    if not alerts["open"]:
        click.echo("  nothing is wrong")


@alerts_group.command("test")
@redis_option
def test_command():
    """Send a test message to every channel of ALERT_CHANNELS (through the notifications queue)."""
    config = settings()
    try:
        alert_settings = load_alert_settings()
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    if not alert_settings.channels:
        fail("ALERT_CHANNELS is empty: set it, e.g. ALERT_CHANNELS=email:ops@example.com,webhook:https://...",
             EXIT_USAGE)  # fmt: skip
    for recipient, job_id in send_test(connect_redis(config), alert_settings):
        label = recipient.to if recipient.channel != "webhook" else recipient.to.split("?")[0]
        click.echo(f"{recipient.channel}:{label}  job {job_id}")
    click.echo("enqueued on the notifications queue; `bullrq jobs show JOB_ID` tells whether it was delivered")
