"""The benchmark's own baseline: plain RQ (`SimpleWorker`, JSON serializer) doing what `bench.run` times bullrq doing,
on the same Redis in the same run, so a regression shows as a ratio without trusting figures from another day.

The jobs are no-ops. A drain is timed from the release of a gate job (the worker is up and every job waits behind
the gate) to the start of a marker job queued last; latency is RQ's own `started_at` minus the send time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path

from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

QUEUE = "rq-baseline"
GATE, MARK = "bench:rq-baseline:gate", "bench:rq-baseline:mark"
ROOT = Path(__file__).resolve().parent.parent
_WORKER = (
    "import sys; from redis import Redis; from rq import Queue, SimpleWorker; "
    "from rq.serializers import JSONSerializer; c = Redis.from_url(sys.argv[1]); "
    f"SimpleWorker([Queue({QUEUE!r}, connection=c, serializer=JSONSerializer)], connection=c, "
    "serializer=JSONSerializer, name='rq-baseline').work(logging_level='WARNING')"
)


def noop() -> None:
    """A job that does nothing."""


def gate(url: str) -> None:
    """Hold the worker until the benchmark releases it."""
    Redis.from_url(url).blpop([GATE], timeout=60)


def mark(url: str) -> None:
    """Write the time this job started: the drain's end."""
    Redis.from_url(url).set(MARK, repr(time.time()))


@dataclass
class Baseline:
    """RQ's figures: jobs/s, and milliseconds of latency."""

    single_enqueue: float
    bulk_enqueue: float
    drain: float
    latency_p50: float
    latency_p99: float
    latency_pause: float  #: seconds between two latency jobs


class BaselineError(Exception):
    """The RQ worker died or stalled."""


class RqWorker:
    """One RQ SimpleWorker process on the baseline queue."""

    def __init__(self, url: str, logs: Path):
        self.url, self.log = url, logs / "rq-baseline.log"

    def __enter__(self) -> RqWorker:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-c", _WORKER, self.url], env=env, stdout=out,
                                         stderr=subprocess.STDOUT, cwd=ROOT)  # fmt: skip
        return self

    def __exit__(self, *exc) -> None:
        self.proc.kill()
        self.proc.wait()


def measure(conn: Redis, url: str, n: int, samples: int, pause: float, logs: Path) -> Baseline:
    """RQ's single and bulk enqueue rates, one SimpleWorker's drain rate and its latency (conn is flushed).

    Latency jobs go `pause` seconds apart, or further apart when RQ takes longer per job: measured on a worker
    that is idle when each arrives, as bullrq's is, not on a backlog."""
    queue = Queue(QUEUE, connection=conn, serializer=JSONSerializer)
    conn.flushdb()
    start = time.perf_counter()
    for _ in range(n):
        queue.enqueue(noop)
    single = n / (time.perf_counter() - start)

    conn.flushdb()
    start = time.perf_counter()
    for first in range(0, n, 1000):
        with conn.pipeline() as pipe:
            queue.enqueue_many([Queue.prepare_data(noop) for _ in range(min(1000, n - first))], pipeline=pipe)
            pipe.execute()
    bulk = n / (time.perf_counter() - start)

    conn.flushdb()
    queue.enqueue(gate, url)
    for first in range(0, n, 1000):
        with conn.pipeline() as pipe:
            queue.enqueue_many([Queue.prepare_data(noop) for _ in range(min(1000, n - first))], pipeline=pipe)
            pipe.execute()
    queue.enqueue(mark, url)
    with RqWorker(url, logs) as worker:
        _wait(lambda: queue.count == n + 1, worker, "the RQ worker to take the gate job")
        released = time.time()
        conn.rpush(GATE, "go")
        _wait(lambda: conn.exists(MARK), worker, "the RQ worker to drain")
    drain = n / (float(conn.get(MARK)) - released)

    pause = max(pause, 3 / drain)  # a third of the time between two jobs is RQ's to take and run one
    conn.flushdb()
    sent = {}
    with RqWorker(url, logs) as worker:
        _wait(lambda: conn.scard("rq:workers"), worker, "the RQ worker to register")
        time.sleep(0.2)
        for _ in range(samples):
            now = time.time()
            sent[queue.enqueue(noop).id] = now
            time.sleep(pause)
        _wait(lambda: len(queue.finished_job_registry) >= samples, worker, "the RQ worker to run the latency jobs")
    ms = []
    for job_id, sent_at in sent.items():
        started = queue.fetch_job(job_id).started_at
        ms.append(((started if started.tzinfo else started.replace(tzinfo=UTC)).timestamp() - sent_at) * 1000)
    ms.sort()
    return Baseline(single, bulk, drain, ms[len(ms) // 2], ms[min(len(ms) - 1, int(len(ms) * 0.99))], pause)


def _wait(condition, worker: RqWorker, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if worker.proc.poll() is not None:
            raise BaselineError(f"the RQ worker exited ({worker.proc.returncode}): {worker.log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise BaselineError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)
