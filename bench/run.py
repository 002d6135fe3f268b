"""Measure bullrq with no-op `system.ping` jobs: enqueue rates, drain throughput, enqueue-to-start latency.

Run it through `scripts/bench`, which starts a throwaway Redis. The benchmark flushes its Redis database between
sections, so it refuses a REDIS_URL that is not a throwaway server (BULLRQ_THROWAWAY_SERVERS=1) unless --flush.

Drains start real worker processes (`workers run QUEUE`) and time from the moment every job waits and every
worker is registered until the queue's `completed` counter reaches the number of jobs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError
from rq.worker import Worker

from app.config import redact
from app.connections import redis_from_url
from app.local.servers import THROWAWAY_FLAG
from app.runtime.enqueue import enqueue, enqueue_many
from app.runtime.redis_scripts import SCRIPTS
from app.store.migrate import apply_migrations
from app.tasks import get_queue_spec, queue_keys
from bench import rq_baseline, web_load
from queues import HISTORY_STREAM, QueueKeys, job_key

TASK = "system.ping"
#: jobs per `enqueue_many` call
CHUNK = 1000
#: jobs/s of one worker process draining no-op jobs, measured by the project owner on this machine class (SPEC.md)
REFERENCES = {"RQ SimpleWorker": 232, "RQ forking worker": 48, "Celery solo": 925, "Dramatiq 8 threads": 1616}
#: jobs/s
BULK_TARGET = 10_000
#: milliseconds
LATENCY_P99_TARGET = 10.0
#: seconds between two jobs of the latency run, so the worker is idle when each arrives
LATENCY_PAUSE = 0.002
#: seconds to wait for workers to register, and for a drain to make progress
REGISTER_TIMEOUT = 30
STALL_TIMEOUT = 30
#: seconds between polls of a draining queue
POLL = 0.005
RQ_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"


@dataclass(frozen=True)
class Sizes:
    """How much each section does."""

    jobs: int = 20_000  #: jobs per enqueue and no-limit drain section
    fork_jobs: int = 300  #: jobs of the fork-per-job drain
    samples: int = 500  #: jobs of the latency run
    web_requests: int = 5_000  #: job creations of the web section
    policy_budget: float = 10  #: seconds a rate-limited drain may take at the policy's rate; its N is cut to fit


#: --quick: a smoke run of a few seconds per section
QUICK = Sizes(jobs=300, fork_jobs=30, samples=50, policy_budget=2, web_requests=160)


class BenchError(Exception):
    """Raised when a section cannot complete (a worker died, jobs failed, the queue stopped draining)."""


@dataclass
class Row:
    """One measured section."""

    section: str
    queue: str
    workers: int  #: worker processes (0: enqueue only)
    requested: int  #: jobs the section asked for
    jobs: int  #: jobs Redis holds (enqueue) or reports completed (drain) at the end
    seconds: float
    rate: float  #: jobs/s
    note: str = ""
    limited_by_policy: bool = False  #: the queue's rate limit, not the runtime, set the pace


@dataclass
class Latency:
    """Enqueue-to-start latency of jobs sent one at a time to an idle worker, in milliseconds."""

    queue: str
    requested: int  #: jobs sent
    samples: int  #: jobs whose start was measured
    p50: float
    p95: float
    p99: float
    max: float


# -- Redis helpers -------------------------------------------------------------------------------------------------


def queue_counts(conn: Redis, keys: QueueKeys) -> tuple[int, int, int]:
    """(waiting in the lanes, running, completed) for one queue, in one round trip."""
    with conn.pipeline(transaction=False) as pipe:
        for lane in keys.lanes:
            pipe.llen(lane)
        pipe.zcard(keys.started)
        pipe.hget(keys.stats, "completed")
        *lanes, running, completed = pipe.execute()
    return sum(lanes), running, int(completed or 0)


def fill(conn: Redis, queue: str, n: int) -> None:
    """Enqueue `n` no-op jobs on `queue` in chunks of CHUNK."""
    for start in range(0, n, CHUNK):
        enqueue_many(conn, [(TASK, {}, {"queue": queue})] * min(CHUNK, n - start))


# -- worker processes ----------------------------------------------------------------------------------------------


class Workers:
    """`count` real worker processes of `queue`, stopped with SIGTERM on exit."""

    def __init__(self, url: str, queue: str, count: int, logs: Path, env: dict | None = None):
        self.url, self.queue, self.count, self.logs, self.env = url, queue, count, logs, env or {}
        self.procs: list[tuple[subprocess.Popen, Path]] = []

    def __enter__(self) -> Workers:
        env = {**os.environ, "REDIS_URL": self.url, **self.env}
        for n in range(1, self.count + 1):
            log = self.logs / f"{self.queue}-{n}.log"
            argv = [sys.executable, "-m", "app.cli.workers", "run", self.queue, "--name", f"bench-{n}"]
            with open(log, "wb") as out:
                self.procs.append((subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT), log))
        return self

    def __exit__(self, *exc) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def check_alive(self) -> None:
        for proc, log in self.procs:
            if proc.poll() is not None:
                tail = "\n    ".join(log.read_text(errors="replace").splitlines()[-10:])
                raise BenchError(f"worker pid {proc.pid} exited with status {proc.returncode}; its log:\n    {tail}")

    def wait_registered(self, conn: Redis) -> None:
        deadline = time.monotonic() + REGISTER_TIMEOUT
        while conn.scard(Worker.redis_workers_keys) < self.count:
            self.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"{self.count} worker(s) of {self.queue} did not register in {REGISTER_TIMEOUT} s")
            time.sleep(0.02)

    def wait_drained(self, conn: Redis, keys: QueueKeys, completed: int) -> int:
        """Poll until nothing waits or runs and `completed` jobs are counted; returns the completed count."""
        last, progress_at = None, time.monotonic()
        while True:
            state = queue_counts(conn, keys)
            lanes, running, done = state
            if done >= completed and lanes == running == 0:
                return done
            if lanes == running == 0:
                failed = conn.hgetall(keys.stats)
                raise BenchError(f"queue {keys.name} is empty but only {done}/{completed} jobs completed: {failed}")
            if state != last:
                last, progress_at = state, time.monotonic()
            elif time.monotonic() - progress_at > STALL_TIMEOUT:
                raise BenchError(f"queue {keys.name} made no progress for {STALL_TIMEOUT} s: {state}")
            self.check_alive()
            time.sleep(POLL)


# -- sections ------------------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, conn: Redis, url: str, logs: Path):
        self.conn, self.url, self.logs = conn, url, logs

    def fresh(self) -> None:
        self.conn.flushdb()

    def single_enqueue(self, n: int, queue: str = "harvest") -> Row:
        self.fresh()
        start = time.perf_counter()
        for _ in range(n):
            enqueue(self.conn, TASK, {}, {"queue": queue})
        seconds = time.perf_counter() - start
        jobs = queue_counts(self.conn, queue_keys(queue))[0]
        return Row("single enqueue (enqueue)", queue, 0, n, jobs, seconds, n / seconds)

    def bulk_enqueue(self, n: int, queue: str = "harvest") -> Row:
        self.fresh()
        start = time.perf_counter()
        fill(self.conn, queue, n)
        seconds = time.perf_counter() - start
        jobs = queue_counts(self.conn, queue_keys(queue))[0]
        met = "met" if n / seconds >= BULK_TARGET else "MISSED"
        return Row(
            f"bulk enqueue (enqueue_many x{CHUNK})",
            queue,
            0,
            n,
            jobs,
            seconds,
            n / seconds,
            f"target >= {BULK_TARGET:,}/s: {met}",
        )

    def drain(self, section: str, queue: str, workers: int, n: int, note: str = "", env: dict | None = None) -> Row:
        """Time `workers` processes draining `n` jobs that wait on the paused queue before the clock starts."""
        self.fresh()
        keys = queue_keys(queue)
        self.conn.set(keys.paused, "1")  # the workers must not start before every job waits and they are all up
        fill(self.conn, queue, n)
        with Workers(self.url, queue, workers, self.logs, env) as procs:
            procs.wait_registered(self.conn)
            start = time.perf_counter()
            with self.conn.pipeline() as pipe:
                pipe.delete(keys.paused)
                # one wake-up per worker: each idle worker blocks on the marker list, and each takes one element
                pipe.lpush(keys.marker, *["1"] * workers)
                pipe.execute()
            done = procs.wait_drained(self.conn, keys, n)
            seconds = time.perf_counter() - start
            if history_on(env):  # the run's rows must reach PostgreSQL too: say how long after the last job
                while self.conn.xlen(HISTORY_STREAM):
                    procs.check_alive()
                    time.sleep(POLL)
                lag = time.perf_counter() - start - seconds
                note = (note + "; " if note else "") + f"history rows all in PostgreSQL {lag:.2f} s after the last job"
        return Row(section, queue, workers, n, done, seconds, done / seconds, note)

    def latency(self, m: int, queue: str = "harvest") -> Latency:
        """Enqueue `m` jobs one at a time to an idle worker; latency is the job's started_at minus the send time."""
        self.fresh()
        keys = queue_keys(queue)
        sent: dict[str, float] = {}
        with Workers(self.url, queue, 1, self.logs) as procs:
            procs.wait_registered(self.conn)
            time.sleep(0.2)  # let the new worker settle into its idle wait
            for _ in range(m):
                now = time.time()
                sent[enqueue(self.conn, TASK, {}, {"queue": queue}).id] = now
                time.sleep(LATENCY_PAUSE)
            procs.wait_drained(self.conn, keys, m)
        with self.conn.pipeline(transaction=False) as pipe:
            for job_id in sent:
                pipe.hget(job_key(job_id), "started_at")
            started = pipe.execute()
        ms = sorted(
            (datetime.strptime(stamp.decode(), RQ_TIME).replace(tzinfo=UTC).timestamp() - sent_at) * 1000
            for stamp, sent_at in zip(started, sent.values(), strict=True)
        )
        cuts = statistics.quantiles(ms, n=100, method="inclusive")
        return Latency(queue, m, len(ms), cuts[49], cuts[94], cuts[98], ms[-1])


def history_on(env: dict | None) -> bool:
    """Whether workers started with `env` write run history (a reachable DATABASE_URL and history not off)."""
    return bool(os.environ.get("DATABASE_URL")) and (env or {}).get("BULLRQ_HISTORY", "1") != "0"


def sync_drain(bench: Bench, n: int, budget: float) -> Row:
    """Drain `sync` with its whole policy on: concurrency cap, rate limit (N cut to fit `budget` seconds), retries."""
    spec = get_queue_spec("sync")
    notes = [f"concurrency cap {spec.concurrency}" if spec.concurrency else "no concurrency cap"]
    notes.append(f"{spec.attempts} attempts")
    rate = spec.rate_limit
    if rate:
        n = min(n, max(1, int(rate.max_jobs / rate.period * budget)))
        notes.append(f"rate limit {rate.max_jobs}/{rate.period:g} s: LIMITED BY POLICY")
    else:
        notes.append("no rate limit set")
    row = bench.drain("drain, everything on", "sync", 2, n, ", ".join(notes))
    row.limited_by_policy = rate is not None
    return row


def run_all(
    bench: Bench, sizes: Sizes
) -> tuple[list[Row], Latency, rq_baseline.Baseline, web_load.WebLoad | None]:
    n = sizes.jobs
    rows = [
        bench.single_enqueue(n),
        bench.bulk_enqueue(n),
        bench.drain("drain, no limits", "harvest", 1, n),
        bench.drain("drain, no limits, history off", "harvest", 1, n, env={"BULLRQ_HISTORY": "0"}),
        bench.drain("drain, no limits", "harvest", 2, n),
        sync_drain(bench, n, sizes.policy_budget),
        bench.drain("drain, fork per job", "documents", 1, sizes.fork_jobs, "isolation=fork"),
    ]
    latency = bench.latency(sizes.samples)
    baseline = rq_baseline.measure(bench.conn, bench.url, n, sizes.samples, LATENCY_PAUSE, bench.logs)
    web = None
    if os.environ.get("DATABASE_URL"):  # the web app migrates its database as it starts
        bench.fresh()
        web = web_load.measure(sizes.web_requests, bench.logs)
    return rows, latency, baseline, web


# -- output --------------------------------------------------------------------------------------------------------


def print_table(
    url: str, rows: list[Row], latency: Latency, baseline: rq_baseline.Baseline, web: web_load.WebLoad | None
) -> None:
    print(
        f"bullrq benchmark: {TASK} no-op jobs; Redis {redact(url)}; {os.cpu_count()} CPUs; "
        f"Python {platform.python_version()}"
    )
    print()
    print(f"{'section':<36} {'queue':<10} {'procs':>5} {'jobs':>7} {'seconds':>8} {'jobs/s':>9}  note")
    for r in rows:
        procs = str(r.workers) if r.workers else "-"
        print(f"{r.section:<36} {r.queue:<10} {procs:>5} {r.jobs:>7} {r.seconds:>8.2f} {r.rate:>9,.0f}  {r.note}")
    print()
    print("drain throughput vs reference (reference, measured by the owner on this machine class; not run here;")
    print("each reference is one worker process):")
    names = list(REFERENCES)
    print(f"{'':<24}" + "".join(f"{name:>20}" for name in names))
    print(f"{'reference jobs/s':<24}" + "".join(f"{REFERENCES[name]:>20,}" for name in names))
    for r in rows:
        if r.limited_by_policy:
            print(f"{r.queue} x{r.workers}: limited by its rate-limit policy ({r.rate:,.1f}/s), not comparable")
        elif r.workers:
            label = f"{r.queue} x{r.workers} ({r.rate:,.0f}/s)"
            print(f"{label:<24}" + "".join(f"{r.rate / REFERENCES[name]:>19.1f}x" for name in names))
    print()
    met = "met" if latency.p99 < LATENCY_P99_TARGET else "MISSED"
    print(
        f"enqueue-to-start latency, 1 idle worker on {latency.queue}, {latency.samples} jobs sent "
        f"{LATENCY_PAUSE * 1000:g} ms apart:"
    )
    print(
        f"  p50 {latency.p50:.2f} ms   p95 {latency.p95:.2f} ms   p99 {latency.p99:.2f} ms   "
        f"max {latency.max:.2f} ms   (target p99 < {LATENCY_P99_TARGET:g} ms: {met})"
    )
    print()
    print("against plain RQ in this run (SimpleWorker, JSON serializer, same Redis, same sizes; > 1 is bullrq ahead):")
    by_section = {r.section: r for r in rows}
    pairs = [
        ("single enqueue", by_section["single enqueue (enqueue)"].rate, baseline.single_enqueue, "/s"),
        ("bulk enqueue", by_section[f"bulk enqueue (enqueue_many x{CHUNK})"].rate, baseline.bulk_enqueue, "/s"),
        ("drain, 1 process", next(r.rate for r in rows if r.queue == "harvest" and r.workers == 1), baseline.drain,
         "jobs/s"),
    ]  # fmt: skip
    for name, ours, theirs, unit in pairs:
        print(f"  {name:<26} bullrq {ours:>10,.0f} {unit:<7} RQ {theirs:>10,.0f} {unit:<7} {ours / theirs:6.2f}x")
    for name, ours, theirs in (("latency p50", latency.p50, baseline.latency_p50),
                               ("latency p99", latency.p99, baseline.latency_p99)):  # fmt: skip
        print(f"  {name:<26} bullrq {ours:>10.2f} ms      RQ {theirs:>10.2f} ms      {theirs / ours:6.2f}x")
    print(f"  (RQ's latency jobs went {baseline.latency_pause * 1000:.1f} ms apart: its worker is idle for each)")
    print()
    if web is None:
        print("web: POST /api/admin/jobs not measured (no DATABASE_URL for the web app)")
        return
    met = "met" if web.rate >= web_load.RATE_TARGET and web.p99 < web_load.P99_TARGET_MS else "MISSED"
    print(
        f"web: POST /api/admin/jobs under `bullrq web`, {web.clients} clients on keep-alive connections, "
        f"{web.requests} jobs: {web.rate:,.0f}/s, p50 {web.p50:.2f} ms, p99 {web.p99:.2f} ms, max {web.max:.2f} ms"
    )
    print(f"  (target >= {web_load.RATE_TARGET:,}/s with p99 < {web_load.P99_TARGET_MS:g} ms: {met})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per enqueue and drain section")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--flush", action="store_true", help="allow flushing a REDIS_URL that is not throwaway")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")

    url = os.environ.get("REDIS_URL")
    if not url:
        print("error: REDIS_URL is not set; run scripts/bench, which starts a throwaway Redis", file=sys.stderr)
        return 2
    if os.environ.get(THROWAWAY_FLAG) != "1" and not args.flush:
        print(
            f"error: refusing to benchmark the Redis at {redact(url)}: the benchmark flushes its database between "
            f"sections and this is not a throwaway server ({THROWAWAY_FLAG} is not set). Pass --flush to allow "
            f"it, or unset REDIS_URL so scripts/bench starts throwaway servers.",
            file=sys.stderr,
        )
        return 2

    sizes = QUICK if args.quick else Sizes(jobs=args.jobs, fork_jobs=min(Sizes.fork_jobs, args.jobs))
    conn = redis_from_url(url)
    with tempfile.TemporaryDirectory(prefix="bullrq-bench-") as logs:
        try:
            SCRIPTS.load(conn)
            if os.environ.get("DATABASE_URL"):
                apply_migrations(os.environ["DATABASE_URL"])  # history on: the workers write job_runs
            rows, latency, baseline, web = run_all(Bench(conn, url, Path(logs)), sizes)
        except RedisError as exc:
            print(f"error: Redis at {redact(url)} failed: {exc}", file=sys.stderr)
            return 1
        except (BenchError, rq_baseline.BaselineError, web_load.WebLoadError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            with contextlib.suppress(RedisError):
                conn.flushdb()
    if args.json:
        print(
            json.dumps(
                {
                    "redis": redact(url),
                    "sections": [asdict(r) for r in rows],
                    "latency": asdict(latency),
                    "sizes": asdict(sizes),
                    "references": REFERENCES,
                    "rq_baseline": asdict(baseline),
                    "web": asdict(web) if web else None,
                },
                indent=2,
            )
        )
    else:
        print_table(url, rows, latency, baseline, web)
    return 0


if __name__ == "__main__":
    sys.exit(main())
