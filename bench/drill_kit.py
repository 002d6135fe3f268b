"""What the fault drills share: sizes, reports, throwaway servers, the fleet of real processes, a job submitter,
and the readings of what every job went through (its status in Redis, its rows in `job_runs`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from redis import Redis
from redis.exceptions import RedisError
from rq.worker_registration import REDIS_WORKER_KEYS

from app.connections import redis_from_url
from app.local.servers import EmbeddedPostgres, EmbeddedRedis, free_port
from app.runtime.enqueue import enqueue
from app.runtime.leases import LEASE
from app.runtime.maintenance import RECOVER_INTERVAL
from app.runtime.redis_scripts import SCRIPTS
from app.runtime.worker import find_rq_worker
from app.store.migrate import apply_migrations
from app.tasks import queue_keys
from queues import HISTORY_STREAM, JOB_KEY_PREFIX

PROJECT = Path(__file__).resolve().parent.parent
TASK = "system.ping"
#: the folder whose sitecustomize registers the modules named in BULLRQ_PRELOAD
PRELOAD = PROJECT / "bench" / "preload"
RQ_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"
#: seconds to wait for a process to register, for jobs to end after the damage stops, for history to arrive
REGISTER_TIMEOUT = 30
SETTLE_TIMEOUT = LEASE + 4 * RECOVER_INTERVAL + 60
HISTORY_TIMEOUT = 60
#: seconds between polls
POLL = 0.05
#: attempts given to drill jobs: a job whose run is killed again and again still ends finished, not failed
ATTEMPTS = 10
ENDED = ("finished", "failed", "canceled", "stopped")


@dataclass(frozen=True)
class Sizes:
    """How hard each drill pushes."""

    jobs: int = 5000  #: a: jobs submitted while workers are killed
    workers: int = 3  #: a, b, c: worker processes
    kills: int = 8  #: a: worker SIGKILLs
    kill_every: float = 3.0  #: a: seconds between kills
    job_sleep: float = 0.01  #: seconds each ping job sleeps (kills then land inside runs)
    restarts: int = 3  #: b: Redis restarts
    load_seconds: float = 4.0  #: b: seconds of load around each restart
    outage: float = 30.0  #: c: seconds PostgreSQL stays down
    c_jobs: int = 3000  #: c: jobs submitted around the outage
    scheduler_kills: int = 8  #: d: SIGKILLs of the active scheduler
    scheduler_every: float = 4.0  #: d: seconds between a takeover and the next kill
    stop_queues: tuple[str, ...] = ("harvest", "embeddings", "documents")  #: e: inline, inline, a forked work horse
    failovers: int = 2  #: f: SIGKILLs of the Redis master (the killed node rejoins as a replica in between)
    failover_load: float = 6.0  #: f: seconds of load around each kill
    redis_outage: float = 60.0  #: g: seconds Redis stays down (past the lease, so leases expire meanwhile)
    flush_load: float = 10.0  #: h: seconds of load after the FLUSHALL
    container_kills: int = 3  #: i: SIGKILLs of the worker that restarts under its previous name
    long_job: float = 5.0  #: i: a third of the seconds the job killed mid-run would take
    #: whether promises on how fast things came back count (the suite's quick form, on a loaded machine, counts
    #: outcomes only: a late recovery is a note there)
    timed: bool = True
    k_jobs: int = 2000  #: k: jobs submitted while workers are killed and RQ's tools read
    read_every: float = 0.1  #: k: seconds between two readings of each reader


#: --quick: bounded, for the test suite; the same promises at a smaller scale
QUICK = Sizes(
    jobs=300, workers=2, kills=3, kill_every=1.5, restarts=1, load_seconds=2.0, outage=5.0, c_jobs=300,
    scheduler_kills=2, scheduler_every=2.0, long_job=2.0,
    stop_queues=("harvest", "documents"), failovers=1, failover_load=3.0, redis_outage=LEASE + 5.0,
    flush_load=5.0, container_kills=1, timed=False, k_jobs=200,
)  # fmt: skip


class DrillError(Exception):
    """Raised when a drill cannot go on (a process would not start, nothing moved for too long)."""


@dataclass
class Report:
    """What one drill saw: figures in print order, broken promises, notes for a person."""

    drill: str
    title: str
    figures: dict[str, Any] = field(default_factory=dict)
    broken: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def promise(self, kept: bool, text: str) -> None:
        if not kept:
            self.broken.append(text)

    @property
    def ok(self) -> bool:
        return not self.broken


# -- servers and processes -----------------------------------------------------------------------------------------


class Servers:
    """The throwaway servers of one run: a PostgreSQL for all drills, a redis-server per drill."""

    def __init__(self, root: Path):
        self.root = root
        self.pg = EmbeddedPostgres(root / "postgres", port=free_port(), durable=False)
        self.redises: list[EmbeddedRedis] = []
        self.cleanups: list[Callable[[], None]] = []  # other servers a drill started, stopped with the rest

    def start(self) -> None:
        self.pg.start()

    def database(self, name: str) -> str:
        """A fresh, migrated database `name` on the shared PostgreSQL; returns its URL."""
        url = self.pg.url
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        url = url.rsplit("/", 1)[0] + "/" + name
        apply_migrations(url)
        return url

    def redis(self, name: str, persistent: bool = False) -> EmbeddedRedis:
        server = EmbeddedRedis(self.root / f"redis-{name}", port=free_port(), persistent=persistent)
        server.start()
        self.redises.append(server)
        return server

    def stage(self, drill: str, persistent: bool = False) -> tuple[EmbeddedRedis, str, Redis]:
        """What drill `drill` runs on: a Redis of its own, a fresh database `drill_<drill>`, and a client of
        that Redis with the scripts loaded."""
        redis = self.redis(drill, persistent)
        conn = redis_from_url(redis.url)
        SCRIPTS.load(conn)
        return redis, self.database(f"drill_{drill}"), conn

    def close(self) -> None:
        for stop in [*self.cleanups, *(server.stop for server in self.redises)]:
            stop()
        self.pg.stop()


class Fleet:
    """The real processes of one drill (worker processes, schedulers), by name; all stopped on exit."""

    def __init__(self, env: dict, logs: Path):
        self.env = env
        self.logs = logs
        self.procs: dict[str, subprocess.Popen] = {}
        self.incarnations: Counter = Counter()

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        self.incarnations[name] += 1
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(argv, cwd=PROJECT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def worker(self, queue: str, name: str) -> subprocess.Popen:
        return self.spawn(name, [sys.executable, "-m", "app.cli.workers", "run", queue, "--name", name])

    def scheduler(self, name: str) -> subprocess.Popen:
        return self.spawn(name, [sys.executable, "-m", "app.cli.main", "scheduler"])

    def web(self, name: str, port: int) -> subprocess.Popen:
        return self.spawn(name, [sys.executable, "-m", "app.cli.main", "web", "--port", str(port)])

    def wait_registered(self, conn: Redis, names: list[str]) -> None:
        deadline = time.monotonic() + REGISTER_TIMEOUT
        for name in names:
            while find_rq_worker(conn, self.procs[name].pid) is None:
                self.check_alive(name)
                if time.monotonic() > deadline:
                    raise DrillError(f"worker {name} did not register in {REGISTER_TIMEOUT} s")
                time.sleep(POLL)

    def check_alive(self, *names: str) -> None:
        for name in names or list(self.procs):
            proc = self.procs[name]
            if proc.poll() is not None:
                raise DrillError(f"{name} (pid {proc.pid}) exited with {proc.returncode}; log:\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 15) -> str:
        path = self.logs / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join("    " + line for line in text.splitlines()[-lines:])

    def kill(self, name: str) -> int:
        proc = self.procs[name]
        proc.kill()
        proc.wait(timeout=10)
        return proc.pid

    def close(self) -> None:
        stop_all(self.procs.values(), grace=20)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def stop_all(procs, grace: float) -> None:
    """SIGTERM every running process of `procs` (a warm shutdown), SIGKILL those still there after `grace` s."""
    running = [p for p in procs if p.poll() is None]
    for proc in running:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in running:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def child_env(root: Path, redis_url: str, database_url: str, **extra: str) -> dict:
    """The environment of a drill's processes: its servers, its own run directory, no `.env`."""
    env = {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": database_url, "PYTHONUNBUFFERED": "1"}
    env.update(BULLRQ_HOME=str(root / "home"), BULLRQ_DOTENV=str(root / "no.env"), **extra)
    return env


def preload_env(env: dict, *modules: str) -> dict:
    """`env` for processes that must also register the task types of `modules` (bench/preload/sitecustomize.py):
    the daemons the `workers` CLI starts inherit it."""
    path = os.pathsep.join(filter(None, [str(PRELOAD), str(PROJECT), env.get("PYTHONPATH")]))
    return {**env, "PYTHONPATH": path, "BULLRQ_PRELOAD": ",".join(modules)}


# -- reading what happened -----------------------------------------------------------------------------------------


def statuses(conn: Redis, job_ids: list[str]) -> dict[str, str | None]:
    """Each job's RQ status in Redis (None: the job is gone)."""
    out: dict[str, str | None] = {}
    for start in range(0, len(job_ids), 1000):
        chunk = job_ids[start : start + 1000]
        with conn.pipeline(transaction=False) as pipe:
            for job_id in chunk:
                pipe.hget(JOB_KEY_PREFIX + job_id, "status")
            for job_id, value in zip(chunk, pipe.execute(), strict=True):
                out[job_id] = value.decode() if value is not None else None
    return out


def wait_ended(conn: Redis, job_ids: list[str], timeout: float = SETTLE_TIMEOUT, fleet: Fleet | None = None) -> float:
    """Wait until every job has ended (or `timeout` seconds pass with none ending); returns the seconds waited."""
    start = last_change = time.monotonic()
    pending = list(job_ids)
    while pending:
        now = statuses(conn, pending)
        still = [job_id for job_id in pending if now[job_id] not in ENDED]
        if len(still) < len(pending):
            last_change = time.monotonic()
        pending = still
        if pending and time.monotonic() - last_change > timeout:
            break
        if pending:
            if fleet is not None:
                fleet.check_alive()
            time.sleep(0.2)
    return time.monotonic() - start


def where_is(conn: Redis, job_id: str, queue: str) -> dict:
    """Where a job that never ended sits in Redis: its hash's telling fields, and each structure holding its id
    (lanes, leases, scheduled set), with Redis' clock, so a lost job can be explained from the report alone."""
    keys = queue_keys(queue)
    fields = ("status", "worker_name", "retries_left", "last_attempt", "earlier_attempts", "started_at",
              "ended_at", "enqueued_at", "last_heartbeat")
    found = dict(zip(fields, (v.decode() if v else None for v in conn.hmget(JOB_KEY_PREFIX + job_id, fields))))
    found["lanes"] = [lane for lane in keys.lanes if conn.lpos(lane, job_id) is not None]
    found["leases"] = [(m.decode(), s) for m, s in conn.zrange(keys.started, 0, -1, withscores=True)
                       if m.decode().rsplit(":", 1)[0] == job_id]
    found["scheduled"] = conn.zscore(keys.scheduled, job_id)
    found["redis time"] = conn.time()
    found["workers"] = {
        k.decode(): {f.decode(): v.decode() for f, v in conn.hgetall(k).items()
                     if f in (b"state", b"current_job", b"lease", b"death", b"last_heartbeat")}
        for k in conn.smembers(REDIS_WORKER_KEYS)
    }
    return found


def wait_history(conn: Redis, timeout: float = HISTORY_TIMEOUT) -> float:
    """Wait until the history stream is empty (every row committed to PostgreSQL); returns the seconds waited."""
    start = time.monotonic()
    while conn.xlen(HISTORY_STREAM) and time.monotonic() - start < timeout:
        time.sleep(POLL)
    return time.monotonic() - start


def history(database_url: str) -> dict[str, list[tuple[int, str, datetime | None]]]:
    """job id -> its rows in `job_runs` as (attempt, status, ended_at), by attempt."""
    runs: dict[str, list] = defaultdict(list)
    with psycopg.connect(database_url) as conn:
        for job_id, attempt, status, ended in conn.execute(
            "SELECT job_id, attempt, status, ended_at FROM job_runs ORDER BY job_id, attempt"
        ):
            runs[job_id].append((attempt, status, ended))
    return runs


def job_counts(
    report: Report, conn: Redis, database_url: str, acked: list[str], queue: str, exactly_once: bool = True
) -> dict:
    """Add the figures every job drill shares (ended how, completed once, run more than once, lost) to `report`
    and check the promise that each acknowledged job completed exactly once (with `exactly_once` off: at least
    once, its extra runs counted); returns the history rows."""
    now = statuses(conn, acked)
    ended = Counter(now.values())
    runs = history(database_url)
    completed_rows = {j: sum(1 for _, s, _ in runs.get(j, ()) if s == "completed") for j in acked}
    once = sum(1 for j in acked if now[j] == "finished" and completed_rows[j] == 1)
    twice = sum(1 for j in acked if completed_rows[j] > 1)
    no_row = sum(1 for j in acked if now[j] == "finished" and completed_rows[j] == 0)
    lost = sum(1 for j in acked if now[j] not in ENDED)
    more = sum(1 for j in acked if len(runs.get(j, ())) > 1)
    abandoned_rows = sum(1 for j in acked for _, s, _ in runs.get(j, ()) if s == "abandoned")
    stats = {k.decode(): int(v) for k, v in conn.hgetall(queue_keys(queue).stats).items()}
    report.figures.update(
        {
            "finished (Redis)": ended.get("finished", 0),
            "failed (Redis)": ended.get("failed", 0),
            "completed exactly once": once,
            "completed more than once": twice,
            "finished without a completed history row": no_row,
            "run more than once (an abandoned run, then a retry)": more,
            "abandoned runs in history / in the queue's counter": f"{abandoned_rows} / {stats.get('abandoned', 0)}",
            "lost (acknowledged, never ended)": lost,
        }
    )
    if lost:
        stuck = Counter(now[j] for j in acked if now[j] not in ENDED)
        report.notes.append(f"jobs that never ended, by status: {dict(stuck)}")
        for job_id in [j for j in acked if now[j] not in ENDED][:5]:
            report.notes.append(f"never ended: {where_is(conn, job_id, queue)}; history {runs.get(job_id, [])}")
    report.promise(lost == 0, f"{lost} acknowledged job(s) lost")
    if exactly_once:
        report.promise(once == len(acked), f"{len(acked) - once} of {len(acked)} job(s) did not complete exactly once")
        report.promise(twice == 0, f"{twice} job(s) completed more than once")
    else:
        unfinished = len(acked) - ended.get("finished", 0)
        report.promise(unfinished == 0, f"{unfinished} of {len(acked)} job(s) did not end finished")
    return runs


class Submitter(threading.Thread):
    """Submits `total` ping jobs one at a time, spread over `seconds` (or until `halt` is set); keeps the ids Redis
    acknowledged and those whose submission failed (such a job may exist all the same: the reply, not the write,
    may be what was lost).

    With `replicas`, each submission waits (up to `replica_wait` seconds) for that many replicas to have the job
    (`enqueue(wait_replicas=...)`); the ids they confirmed are kept in `replicated`.
    """

    def __init__(
        self, url: str, queue: str, total: int, seconds: float, sleep: float, replicas: int = 0, replica_wait=0.1
    ):
        super().__init__(daemon=True)
        self.conn = redis_from_url(url, socket_timeout=5)
        self.queue, self.total, self.seconds, self.sleep = queue, total, seconds, sleep
        self.replicas, self.replica_wait = replicas, replica_wait
        self.acked: list[str] = []
        self.unacked: list[str] = []
        self.replicated: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        options = {"queue": self.queue, "attempts": ATTEMPTS}
        start = time.monotonic()
        for n in range(1, self.total + 1):
            if self.halt.is_set():
                break
            job_id = str(uuid.uuid4())
            try:
                job = enqueue(
                    self.conn, TASK, {"sleep": self.sleep}, options, job_id=job_id,
                    wait_replicas=self.replicas, wait_timeout=self.replica_wait,
                )  # fmt: skip
                self.acked.append(job_id)
                if self.replicas and job.replicas >= self.replicas:
                    self.replicated.append(job_id)
            except RedisError:
                self.unacked.append(job_id)
                time.sleep(0.02)
            delay = start + self.seconds * n / self.total - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def finish(self, timeout: float = 600) -> None:
        self.join(timeout)
        if self.is_alive():
            raise DrillError("the submitter did not finish")


def started_workers(fleet: Fleet, conn: Redis, queue: str, count: int, prefix: str) -> list[str]:
    names = [f"{prefix}-{n}" for n in range(1, count + 1)]
    for name in names:
        fleet.worker(queue, name)
    fleet.wait_registered(conn, names)
    return names


def completed_count(conn: Redis, queue: str) -> int:
    """Jobs of `queue` completed so far, by its counter (-1 while Redis does not answer)."""
    try:
        return int(conn.hget(queue_keys(queue).stats, "completed") or 0)
    except RedisError:
        return -1

