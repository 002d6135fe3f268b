"""`workers`: start, stop, restart, inspect and run the worker processes of this machine."""

from __future__ import annotations

import json
import logging
import socket
import sys
import time
from datetime import UTC, datetime

import click
from redis.exceptions import RedisError
from rq.worker import Worker

from app.cli.common import (
    EXIT_FAILURE,
    EXIT_USAGE,
    check_eviction,
    connect_redis,
    fail,
    redis_option,
    settings,
    user_errors,
)
from app.errors import UnknownQueueError
from app.local import processes
from app.local.processes import Daemon, RunProcesses
from app.logs import configure_logging
from app.runtime.jobs import SERIALIZER
from app.runtime.worker import find_rq_worker, requeue_job_of_dead_worker, run_worker, worker_processes
from app.tasks import get_queue_spec
from queues import queue_names

#: seconds `start` waits for a new worker to register in Redis
REGISTER_TIMEOUT = 30
#: seconds `stop` lets a running job finish before the worker is killed
DEFAULT_STOP_TIMEOUT = 30


def _queues(names: tuple[str, ...]) -> list[str]:
    """The queues named (all of them when none is), validated: an unknown name exits 2 listing the valid ones."""
    for name in names:
        try:
            get_queue_spec(name)
        except UnknownQueueError as exc:
            fail(str(exc), EXIT_USAGE)
    return list(dict.fromkeys(names)) if names else queue_names()


def _fleet(config) -> RunProcesses:
    return RunProcesses(config.home)


def _workers_on_file(fleet: RunProcesses, queues: list[str]) -> list[Daemon]:
    """Worker processes with a pid file serving one of `queues` (also those numbered above today's count, and
    those whose stop was interrupted), whoever started them."""
    return [d for d in fleet.on_file(stopping=True) if fleet.queue_of(d.name) in queues]


def _reap(connection, daemon: Daemon, pid: int, stopped: bool = False) -> str:
    """Clean up after a dead worker: kill what it forked, take back the job it was running. Returns a note.

    A worker that crashed used an attempt of its job; one killed because its stop timed out (`stopped`) did not.
    """
    processes.kill_group(daemon, pid)
    rq_worker = find_rq_worker(connection, pid)
    job_id = requeue_job_of_dead_worker(connection, rq_worker, consume_attempt=not stopped) if rq_worker else None
    return f", job {job_id} requeued" if job_id else ""


def _ensure_supervisor(fleet: RunProcesses) -> None:
    """Start a background supervisor for the run directory unless one (scripts/up's or another) runs."""
    if fleet.supervisor_pid() is not None:
        return
    daemon = Daemon("supervisor", fleet.supervisor_pid_file, fleet.log_file("supervisor"))
    pid = processes.spawn(daemon, [sys.executable, "-m", "app.local.supervisor"])
    click.echo(f"supervisor: started (pid {pid}); it restarts crashed processes")


def _start(queues: list[str]) -> None:
    config = settings()
    connection = connect_redis(config)
    check_eviction(connection, refuse=True, config=config)
    fleet = _fleet(config)
    started: list[tuple[Daemon, int]] = []
    with fleet.lock():  # a supervisor restarting a crashed worker at the same moment waits for us
        for name, _queue in worker_processes(queues):
            daemon = fleet.daemon(name)
            pid = daemon.read_pid()
            if pid is not None and daemon.is_alive(pid):
                click.echo(f"{daemon.name}: already running (pid {pid})")
                continue
            note = ""
            if pid is not None:
                note = f" (replaced stale pid file of dead pid {pid}{_reap(connection, daemon, pid)})"
            started.append((daemon, processes.spawn(daemon, fleet.command(name))))
            click.echo(f"{daemon.name}: starting (pid {started[-1][1]}){note}")
    _ensure_supervisor(fleet)

    failed = []
    deadline = time.monotonic() + REGISTER_TIMEOUT
    for daemon, pid in started:
        while find_rq_worker(connection, pid) is None:
            if not daemon.is_alive(pid) or time.monotonic() > deadline:
                failed.append(daemon)
                break
            time.sleep(0.05)
    for daemon in failed:
        tail = daemon.log_file.read_text(errors="replace").splitlines()[-5:] if daemon.log_file.exists() else []
        click.secho(f"{daemon.name}: failed to start; last lines of {daemon.log_file}:", err=True, fg="red")
        for line in tail:
            click.echo(f"    {line}", err=True)
    click.echo(f"started {len(started) - len(failed)} worker(s)")
    if failed:
        sys.exit(EXIT_FAILURE)


def _stop(queues: list[str], timeout: float) -> None:
    config = settings()
    fleet = _fleet(config)
    daemons = _workers_on_file(fleet, queues)
    if not daemons:
        click.echo("no worker running")
        return
    with fleet.lock():  # after this, the supervisor leaves them to their stop
        processes.mark_stopping(daemons)
    outcomes = processes.stop(daemons, timeout)
    connection = None
    for daemon in daemons:
        pid, outcome = outcomes[daemon.name]
        note = ""
        if outcome != "stopped" and pid is not None:
            connection = connection or connect_redis(config)
            note = _reap(connection, daemon, pid, stopped=outcome == "killed")
        click.echo(f"{daemon.name}: {outcome}" + (f" (pid {pid}{note})" if pid else ""))


_timeout_option = click.option(
    "--timeout", default=DEFAULT_STOP_TIMEOUT, type=click.FloatRange(min=0), show_default=True,
    help="Seconds to let running jobs finish before the worker is killed (its job is requeued).",
)  # fmt: skip


@click.group()
def cli():
    """Manage the worker processes of the run directory (pid files and logs live there; see `app.local.processes`)."""


@cli.command()
@click.argument("queues", nargs=-1)
@redis_option
def start(queues):
    """Start the worker processes of QUEUES (all queues when none is named); running ones are left alone."""
    _start(_queues(queues))


@cli.command()
@click.argument("queues", nargs=-1)
@_timeout_option
@redis_option
def stop(queues, timeout):
    """Stop the worker processes of QUEUES (all when none is named) after their current job."""
    _stop(_queues(queues), timeout)


@cli.command()
@click.argument("queues", nargs=-1)
@_timeout_option
@redis_option
def restart(queues, timeout):
    """Stop, then start again, the worker processes of QUEUES (all when none is named)."""
    names = _queues(queues)
    _stop(names, timeout)
    _start(names)


def _age(moment: datetime | None) -> float | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round((datetime.now(UTC) - moment).total_seconds(), 1)


def _status_rows(connection, fleet: RunProcesses, supervised: dict) -> list[dict]:
    """One row per process of the run directory (web, scheduler, workers: those with a pid file, whoever started
    them), then one per other worker registered in Redis (run in the foreground, or on another host)."""
    registered = Worker.all(connection=connection, serializer=SERIALIZER)
    host = socket.gethostname()
    by_pid = {w.pid: w for w in registered if w.hostname == host}
    rows, seen = [], set()
    for daemon in fleet.on_file(stopping=True):
        stopping = not daemon.pid_file.exists()
        pid = daemon.read_pid() if not stopping else processes._read_int(daemon.stopping_file)
        rq_worker = by_pid.get(pid) if fleet.queue_of(daemon.name) else None
        if rq_worker is not None:
            seen.add(rq_worker.name)
        row = _row(daemon.name, pid, daemon.is_alive(pid), rq_worker, managed=not stopping)
        if fleet.kind(daemon.name) != "worker":
            row.update(queues=[], state="stopping" if stopping else ("running" if row["alive"] else "dead"))
        elif stopping:
            row["state"] = "stopping"
        track = supervised.get(daemon.name) or {}
        row["restarts"] = track.get("restarts", 0)
        row["last_exit"] = track.get("last_exit")
        row["crash_loop"] = bool(track.get("crash_loop"))  # alive or not: it is only between two crashes
        if not row["alive"] and track.get("next_restart_at"):
            row["restart_in"] = round(max(0.0, track["next_restart_at"] - time.time()), 1)
        rows.append(row)
    for rq_worker in registered:
        if rq_worker.name not in seen:
            # on this host the pid tells; elsewhere the registration (it expires without heartbeats) does
            alive = processes.pid_exists(rq_worker.pid) if rq_worker.hostname == host else True
            rows.append(_row(rq_worker.name.split(".", 1)[0], rq_worker.pid, alive, rq_worker, managed=False))
    return rows


def _row(name: str, pid: int | None, alive: bool, rq_worker, managed: bool) -> dict:
    row = {
        "name": name,
        "queues": [name.rsplit("-", 1)[0]] if rq_worker is None else rq_worker.queue_names(),
        "pid": pid,
        "alive": alive,
        "managed": managed,  # a process of this run directory: expected to be up
        "state": None,
        "current_job": None,
        "successful": None,
        "failed": None,
        "heartbeat_age": None,
        "rss_bytes": processes.rss_bytes(pid) if pid and alive else None,
        "hostname": None,
        "restarts": None,
        "last_exit": None,
        "crash_loop": False,
    }
    if rq_worker is not None:
        row.update(
            state=rq_worker.get_state() if alive else "dead",
            current_job=rq_worker.get_current_job_id(),
            successful=rq_worker.successful_job_count,
            failed=rq_worker.failed_job_count,
            heartbeat_age=_age(rq_worker.last_heartbeat),
            hostname=rq_worker.hostname,
        )
    else:
        row["state"] = "starting" if alive else "dead"
    return row


_COLUMNS = (  # header, width (negative: left-aligned), cell
    ("NAME", -18, lambda r: r["name"]),
    ("QUEUES", -16, lambda r: ",".join(r["queues"])),
    ("PID", 7, lambda r: r["pid"]),
    ("ALIVE", -5, lambda r: "yes" if r["alive"] else "NO"),
    ("STATE", -8, lambda r: r["state"]),
    ("JOB", -36, lambda r: r["current_job"]),
    ("OK", 6, lambda r: r["successful"]),
    ("FAILED", 6, lambda r: r["failed"]),
    ("BEAT", 6, lambda r: None if r["heartbeat_age"] is None else f"{r['heartbeat_age']:.0f}s"),
    ("RSS", 8, lambda r: None if r["rss_bytes"] is None else f"{r['rss_bytes'] / 2**20:.1f}M"),
    ("RESTARTS", 8, lambda r: r["restarts"]),
)


def _print_table(rows: list[dict]) -> None:
    def line(cells):
        return " ".join(f"{'-' if c is None else c!s:{'<' if w < 0 else '>'}{abs(w)}}" for c, (_, w, _) in cells)

    click.echo(line((h, col) for col in _COLUMNS for h in [col[0]]))
    for row in rows:
        click.echo(line((col[2](row), col) for col in _COLUMNS))
    if not rows:
        click.echo("no workers")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@redis_option
def status(as_json):
    """Show each process of the run directory (web, scheduler, workers) and each other registered worker:
    queues, pid, alive, idle/busy, current job, counts, heartbeat age, memory, restarts.

    Exits 1 when a process of the run directory is dead or crash looping, or Redis is unreachable.
    """
    config = settings()
    connection = connect_redis(config)
    fleet = _fleet(config)
    supervisor_pid = fleet.supervisor_pid()
    state = fleet.supervisor_state() if supervisor_pid else {}
    try:
        rows = _status_rows(connection, fleet, state.get("processes") or {})
    except RedisError as exc:
        fail(f"Redis failed while reading workers: {exc}")
    dead = [row["name"] for row in rows if row["managed"] and not row["alive"]]
    supervisor = {"pid": supervisor_pid, "mode": state.get("mode"), "servers": {
        name: track for name, track in (state.get("processes") or {}).items() if name in ("redis", "postgres")
    }}  # fmt: skip
    if as_json:
        click.echo(json.dumps({"workers": rows, "dead": dead, "supervisor": supervisor}, indent=2))
    else:
        _print_table(rows)
        if supervisor_pid:
            who = "scripts/up" if state.get("mode") == "up" else "background"
            click.echo(f"supervisor: pid {supervisor_pid} ({who}); crashed processes are restarted")
        elif rows:
            click.echo("supervisor: none; crashed processes stay down (`workers start` starts one)")
    looping = [row for row in rows if row["crash_loop"]]
    for row in looping:
        when = f", next restart in {row['restart_in']} s" if "restart_in" in row else ", running again for now"
        click.secho(f"{row['name']}: crash loop ({row['last_exit']}){when}", err=True, fg="red")
    if dead:
        click.secho(f"dead: {', '.join(dead)}", err=True, fg="red")
    if dead or looping:
        sys.exit(EXIT_FAILURE)


@cli.command()
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep printing lines as they are written.")
@click.option("-n", "--lines", default=50, type=click.IntRange(min=0), show_default=True, help="Lines to show.")
def logs(name, follow, lines):
    """Print the log of process NAME of the run directory (sync-1, web, scheduler, supervisor)."""
    fleet = _fleet(settings())
    path = fleet.log_file(name)
    if not path.is_file():
        home = fleet.home
        folders = [folder for folder in (home.logs, home.worker_logs) if folder.is_dir()]
        known = sorted(p.stem for folder in folders for p in folder.glob("*.log"))
        fail(f"no log for process {name!r}; logs: {', '.join(known) or 'none yet'}", EXIT_USAGE)
    with open(path, errors="replace") as handle:
        tail = handle.readlines()[-lines:] if lines else []
        click.echo("".join(tail), nl=False)
        if not follow:
            return
        try:
            while True:
                line = handle.readline()
                if line:
                    click.echo(line, nl=False)
                else:
                    time.sleep(0.2)
        except KeyboardInterrupt:
            pass


@cli.command()
@click.argument("queues", nargs=-1, required=True)
@click.option("--name", default=None, help="Process name (default: the queue names joined by '+').")
@click.option("--burst", is_flag=True, help="Exit once the queues are empty.")
@redis_option
@user_errors
def run(queues, name, burst):
    """Run one worker for QUEUES in the foreground (for the Procfile, containers and debugging)."""
    names = _queues(queues)
    config = settings()
    configure_logging(config.log_format, logging.DEBUG if config.debug else logging.INFO)
    connection = connect_redis(config)
    check_eviction(connection, refuse=True, config=config)
    run_worker(names, connection, name or "+".join(names), burst=burst, database_url=config.database_url)


if __name__ == "__main__":
    cli()
