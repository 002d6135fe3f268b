"""The supervisor of a run directory: restarts the processes that crash, with backoff; stops them all on SIGTERM.

`scripts/up` runs one in the foreground (it also watches the local Redis and PostgreSQL it started); `workers start`
spawns one in the background when none runs (`python -m app.local.supervisor`), which exits once no process is left.
Either way it supervises exactly the processes with a pid file in the run directory (`app.local.processes`), whoever
started them, so workers added later with `workers start` are restarted and stopped like the others.

A process whose pid file remains but whose process is gone crashed (a deliberate stop renames the pid file first):
its process group is killed, the job it was running is taken back at once through the lease recovery (the lost run
counts as an attempt, and only that worker's own lease is touched), then it is started again after a backoff that
doubles with each crash in a row (1 s, 2 s, 4 s ... 60 s) and is forgotten once it has stayed up `STABLE_AFTER`.
Restarts are logged, kept in `supervisor.json` (read by `workers status`) and counted in Redis for `/metrics`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

from redis.exceptions import RedisError

from app.config import RunDir, ensure_admin_token, load_settings
from app.connections import redis_from_url
from app.errors import BullrqError
from app.local import processes
from app.local.processes import WEB, Daemon, RunProcesses
from app.logs import configure_logging
from queues import PROCESS_RESTARTS_KEY

logger = logging.getLogger(__name__)

#: seconds between looks at the processes
TICK = 0.5
#: seconds before the first restart of a crashed process; doubled for each crash in a row, up to BACKOFF_MAX
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0
#: seconds a restarted process must stay up before its crashes in a row are forgotten
STABLE_AFTER = 30.0
#: crashes in a row from which a process is reported as crash looping
CRASH_LOOP = 3
#: seconds running jobs get to finish when everything stops
STOP_TIMEOUT = 30
#: seconds a background supervisor waits with nothing to supervise before it exits
IDLE_EXIT = 5.0


def backoff(crashes_in_a_row: int) -> float:
    """Seconds to wait before restarting a process that crashed `crashes_in_a_row` times in a row (1 = first)."""
    return min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(0, crashes_in_a_row - 1))


@dataclass
class Track:
    """What the supervisor knows of one process."""

    restarts: int = 0  #: restarts since this supervisor started
    streak: int = 0  #: crashes in a row (reset once up STABLE_AFTER seconds)
    last_exit: str | None = None  #: how it last ended, for people
    last_crash_at: float | None = None
    next_restart_at: float | None = None  #: set while it is dead and waiting for its restart
    crash_loop: bool = False
    up_since: float | None = None
    dead_pid: int | None = None


class Supervisor:
    """Watches the processes of one run directory (and, for `scripts/up`, its local servers)."""

    def __init__(self, home: RunDir, env: dict, port: int | None = None, servers=(), mode: str = "up"):
        self.fleet = RunProcesses(home)
        self.env = dict(env)
        self.port = port
        self.servers = list(servers)  #: (name, server): the local Redis and PostgreSQL scripts/up started
        self.mode = mode
        self.tracks: dict[str, Track] = {}
        self.children: dict[int, subprocess.Popen] = {}  #: processes this supervisor spawned, by pid
        self._exits: dict[int, int] = {}  #: exit statuses of spawned processes, by pid, until looked at
        self._pending_reaps: list[int] = []  #: pids of dead workers whose job is still to be taken back
        self._redis = None
        self._published: dict[str, int] = {}  #: restart counts already written to Redis
        self._state_written = ""
        self.host = socket.gethostname()

    # -- starting -----------------------------------------------------------------------------------------------

    def spawn(self, name: str) -> int:
        """Start process `name` detached, its output in its log file; returns its pid."""
        daemon = self.fleet.daemon(name)
        env = dict(self.env)
        if name == WEB and not env.get("ADMIN_TOKEN"):
            settings = load_settings()  # with `.env`, as the web app will read it: its token wins over the file
            if not settings.admin_token:
                env["ADMIN_TOKEN"] = ensure_admin_token(settings)
        child = processes.spawn_child(daemon, self.fleet.command(name, self.port), env)
        self.children[child.pid] = child
        return child.pid

    def start(self, names: list[str]) -> list[str]:
        """Start each process of `names` that is not running (those running are adopted); returns those started."""
        started = []
        with self.fleet.lock():
            for name in names:
                daemon = self.fleet.daemon(name)
                pid = daemon.read_pid()
                if pid is not None and daemon.is_alive(pid):
                    continue
                if pid is not None:
                    processes.kill_group(daemon, pid)
                    self._reap_worker(name, pid)
                self.spawn(name)
                started.append(name)
        self.write_state()
        return started

    # -- watching -----------------------------------------------------------------------------------------------

    def tick(self) -> None:
        """One look at every server and process: restart what died once its backoff has passed."""
        for pid, child in list(self.children.items()):
            if child.poll() is not None:  # reaped here, so it leaves no zombie; its status is kept for the log
                self.children.pop(pid)
                self._exits[pid] = child.returncode
        for name, server in self.servers:
            self._check_server(name, server)
        for daemon in self.fleet.on_file():
            self._check(daemon)
        if self._pending_reaps:
            self._take_back_jobs()
        self.write_state()
        self._publish_restarts()

    def _check(self, daemon: Daemon) -> None:
        name, now = daemon.name, time.time()
        pid = daemon.read_pid()
        if pid is None:
            return
        track = self.tracks.setdefault(name, Track())
        if daemon.is_alive(pid):
            if track.up_since is None:
                track.up_since = now
            elif track.streak and now - track.up_since >= STABLE_AFTER:
                track.streak, track.crash_loop = 0, False
            return
        with self.fleet.lock():
            if daemon.read_pid() != pid:  # stopped on purpose or started again meanwhile
                return
            if track.dead_pid != pid:
                self._crashed(daemon, pid, track, now)
            if now < (track.next_restart_at or 0):
                return
            new_pid = self.spawn(name)
        track.restarts += 1
        track.up_since, track.dead_pid, track.next_restart_at = now, None, None
        logger.warning("%s: restarted (pid %d), restart %d", name, new_pid, track.restarts)

    def _crashed(self, daemon: Daemon, pid: int, track: Track, now: float) -> None:
        child = self.children.get(pid)
        if child is not None and child.poll() is not None:  # it died after this tick's look at the children
            self._exits[pid] = self.children.pop(pid).returncode
        status = self._exits.pop(pid, None)
        if status is None:
            how = "died"
        elif status < 0:
            how = f"was killed by {signal.Signals(-status).name}"
        else:
            how = f"exited with status {status}"
        track.dead_pid, track.last_exit, track.last_crash_at = pid, how, now
        track.streak += 1
        delay = backoff(track.streak)
        track.next_restart_at = now + delay
        track.up_since = None
        track.crash_loop = track.streak >= CRASH_LOOP
        if track.crash_loop:
            logger.error("%s (pid %d) %s: crash loop, %d crashes in a row; next restart in %.0f s",
                         daemon.name, pid, how, track.streak, delay)
        else:
            logger.error("%s (pid %d) %s; restarting in %.0f s", daemon.name, pid, how, delay)
        processes.kill_group(daemon, pid)  # what it forked (a work horse, gunicorn's workers) goes with it
        self._reap_worker(daemon.name, pid)

    def _reap_worker(self, name: str, pid: int) -> None:
        if self.fleet.queue_of(name):
            self._pending_reaps.append(pid)
            self._take_back_jobs()

    def _take_back_jobs(self) -> None:
        """Take back the jobs of dead workers now, rather than when their leases run out (retried while Redis is
        down: the leases expire meanwhile and any live worker recovers them then)."""
        from app.runtime.worker import find_rq_worker, requeue_job_of_dead_worker

        try:
            connection = self._connection()
            while self._pending_reaps:
                pid = self._pending_reaps[0]
                rq_worker = find_rq_worker(connection, pid, self.host)
                job_id = requeue_job_of_dead_worker(connection, rq_worker) if rq_worker else None
                if job_id:
                    logger.warning("job %s: taken back from dead worker pid %d", job_id, pid)
                self._pending_reaps.pop(0)
        except (RedisError, BullrqError) as exc:
            logger.warning("supervisor: cannot take back jobs of dead workers yet: %s", exc)
            self._redis = None

    def _check_server(self, name: str, server) -> None:
        track = self.tracks.setdefault(name, Track())
        now = time.time()
        if server.is_running():
            if track.up_since is None:
                track.up_since = now
            elif track.streak and now - track.up_since >= STABLE_AFTER:
                track.streak, track.crash_loop = 0, False
            return
        if track.next_restart_at is None:
            track.streak += 1
            track.last_exit, track.last_crash_at, track.up_since = "stopped running", now, None
            track.next_restart_at = now + backoff(track.streak)
            track.crash_loop = track.streak >= CRASH_LOOP
            logger.error("local %s is down%s; restarting in %.0f s", name,
                         " (crash loop)" if track.crash_loop else "", track.next_restart_at - now)
        if now < track.next_restart_at:
            return
        try:
            server.start()
        except BullrqError as exc:
            track.streak += 1
            track.next_restart_at = time.time() + backoff(track.streak)
            track.crash_loop = track.streak >= CRASH_LOOP
            logger.error("local %s failed to restart: %s", name, str(exc).splitlines()[0])
            return
        track.restarts += 1
        track.next_restart_at, track.up_since = None, time.time()
        logger.warning("local %s: restarted on port %d, restart %d", name, server.port, track.restarts)

    # -- reporting ----------------------------------------------------------------------------------------------

    def state(self) -> dict:
        return {
            "pid": os.getpid(),
            "mode": self.mode,
            "host": self.host,
            "processes": {name: asdict(track) for name, track in sorted(self.tracks.items())},
        }

    def write_state(self) -> None:
        """Write the state file when it changed (whole, then renamed: a reader never sees half of it)."""
        text = json.dumps(self.state(), indent=1, sort_keys=True)
        if text == self._state_written:
            return
        path = self.fleet.supervisor_state_file
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        partial.write_text(text + "\n")
        os.replace(partial, path)
        self._state_written = text

    def _publish_restarts(self) -> None:
        changed = {n: t.restarts for n, t in self.tracks.items() if t.restarts != self._published.get(n, 0)}
        if not changed:
            return
        try:
            connection = self._connection()
            with connection.pipeline(transaction=False) as pipe:  # added, never overwritten: supervisors come and go
                for name, count in changed.items():
                    pipe.hincrby(PROCESS_RESTARTS_KEY, f"{self.host}/{name}", count - self._published.get(name, 0))
                pipe.execute()
            self._published.update(changed)
        except (RedisError, BullrqError):
            self._redis = None  # counted on the next tick that reaches Redis

    def _connection(self):
        if self._redis is None:
            url = self.env.get("REDIS_URL") or load_settings().redis_url  # the environment, `.env`, the run dir
            self._redis = redis_from_url(url)
        return self._redis

    # -- stopping -----------------------------------------------------------------------------------------------

    def stop_all(self, timeout: float = STOP_TIMEOUT) -> dict[str, tuple[int | None, str]]:
        """Stop every process of the run directory at once (running jobs finish first, up to `timeout`); a job
        whose worker had to be killed is taken back without counting an attempt."""
        from app.runtime.worker import find_rq_worker, requeue_job_of_dead_worker

        with self.fleet.lock():
            daemons = self.fleet.on_file(stopping=True)
            outcomes = processes.stop(daemons, timeout)
        for pid, child in list(self.children.items()):
            child.poll()
            self.children.pop(pid)
        killed = [pid for name, (pid, outcome) in outcomes.items() if outcome == "killed" and self.fleet.queue_of(name)]
        if killed:
            try:
                connection = self._connection()
                for pid in killed:
                    rq_worker = find_rq_worker(connection, pid, self.host)
                    if rq_worker:
                        requeue_job_of_dead_worker(connection, rq_worker, consume_attempt=False)
            except (RedisError, BullrqError) as exc:
                logger.warning("supervisor: jobs of killed workers wait for their leases to expire: %s", exc)
        for name, (pid, outcome) in outcomes.items():
            if pid is not None:
                logger.info("%s (pid %d): %s", name, pid, outcome)
        return outcomes


class _Exit(Exception):
    pass


def main() -> int:
    """A background supervisor (spawned by `workers start`): watch until nothing is left, or SIGTERM (stop all)
    or SIGUSR1 (leave the processes running: `scripts/up` takes over)."""
    settings = load_settings()
    configure_logging(settings.log_format)
    fleet = RunProcesses(settings.home)
    if fleet.supervisor_pid() not in (None, os.getpid()):
        logger.info("supervisor: another one already watches %s", settings.home.root)
        return 0
    fleet.supervisor_pid_file.write_text(f"{os.getpid()}\n")
    supervisor = Supervisor(settings.home, dict(os.environ), mode="background")

    def on_signal(signum, frame):
        raise _Exit(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(signum, on_signal)
    logger.info("supervisor: watching the processes of %s (pid %d)", settings.home.root, os.getpid())
    idle_since = None
    try:
        while True:
            supervisor.tick()
            if fleet.on_file(stopping=True):
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > IDLE_EXIT:
                logger.info("supervisor: nothing left to watch; exiting")
                return 0
            time.sleep(TICK)
    except _Exit as exc:
        signum = exc.args[0]
        for other in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(other, signal.SIG_IGN)
        if signum == signal.SIGUSR1:
            logger.info("supervisor: handing over (the processes keep running)")
        else:
            logger.info("supervisor: %s received, stopping every process", signal.Signals(signum).name)
            supervisor.stop_all()
        return 0
    finally:
        if fleet.supervisor_pid_file.exists() and processes._read_int(fleet.supervisor_pid_file) == os.getpid():
            fleet.supervisor_pid_file.unlink()


if __name__ == "__main__":
    sys.exit(main())
