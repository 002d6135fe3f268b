"""Test-only task types (`semantics.*`) for the process-level semantics tests.

Each handler records its runs in the Redis list `RUNS` (one JSON entry per event: tag, event, time, pid), so a
test can count runs and read their order and timing whatever process ran them. Worker processes that must run
these types import this module before the worker CLI (see `tests/worker_processes.py`).
"""

from __future__ import annotations

import json
import os
import time

import redis

from app.errors import PermanentFailure, RetryLater
from app.runtime import progress
from app.tasks import task
from bench.gates import pass_gate

#: Redis list of run events, oldest first
RUNS = "test:runs"
_clients: dict[int, redis.Redis] = {}


def _redis() -> redis.Redis:
    """A client of the suite's Redis for this process (a forked work horse gets its own)."""
    pid = os.getpid()
    if pid not in _clients:
        _clients[pid] = redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=None)
    return _clients[pid]


def _record(tag: str, event: str = "start") -> int:
    """Add a run event for `tag`; returns how many times `tag` has started (1 on the first run)."""
    client = _redis()
    runs = client.incr(f"test:count:{tag}") if event == "start" else int(client.get(f"test:count:{tag}") or 0)
    entry = {"tag": tag, "event": event, "t": time.time(), "pid": os.getpid(), "run": runs}
    client.rpush(RUNS, json.dumps(entry))
    return runs


def runs(connection: redis.Redis, tag: str | None = None, event: str = "start") -> list[dict]:
    """The recorded events (of `tag`, when given), oldest first."""
    entries = [json.loads(raw) for raw in connection.lrange(RUNS, 0, -1)]
    return [e for e in entries if e["event"] == event and (tag is None or e["tag"] == tag)]


def open_gate(connection: redis.Redis, tag: str) -> None:
    """Let a `semantics.gated` run of `tag` go on past its gate."""
    connection.rpush(f"test:gate:{tag}", "go")


@task("semantics.record", queue=None)
def record(tag: str, sleep: float = 0) -> str:
    """Record the run, sleep `sleep` seconds, record its end, return the tag."""
    _record(tag)
    if sleep:
        time.sleep(sleep)
    _record(tag, "end")
    return tag


@task("semantics.fail", queue=None)
def fail(tag: str) -> None:
    """Record the run, then fail with an ordinary exception."""
    run = _record(tag)
    raise RuntimeError(f"boom {tag} run {run}")


@task("semantics.flaky", queue=None)
def flaky(tag: str, fail_times: int = 1) -> str:
    """Fail the first `fail_times` runs of `tag`, then succeed."""
    run = _record(tag)
    if run <= fail_times:
        raise RuntimeError(f"flaky {tag} run {run}")
    return f"{tag} ok on run {run}"


@task("semantics.permanent", queue=None)
def permanent(tag: str) -> None:
    """Record the run, then fail for good."""
    _record(tag)
    raise PermanentFailure(f"cannot ever work: {tag}")


@task("semantics.retry-later", queue=None)
def retry_later(tag: str, times: int = 1, delay: float = 1) -> str:
    """Ask to be retried after `delay` seconds on the first `times` runs, then succeed."""
    run = _record(tag)
    if run <= times:
        raise RetryLater(f"not yet ({tag})", delay=delay)
    return f"{tag} done"


@task("semantics.exit", queue=None)
def exit_now(tag: str, code: int = 1) -> None:
    """Record the run, then end the process at once with `code` (a crash no handler could catch)."""
    _record(tag)
    os._exit(code)


@task("semantics.gated", queue=None)
def gated(tag: str, wait: float = 20, after: float = 0) -> str:
    """Record the run, then wait (at most `wait` seconds) for the test to open the gate of `tag`; record that, and
    return after `after` more seconds away from Redis (a test can then take Redis down under a finished handler)."""
    _record(tag)
    opened = pass_gate(_redis(), f"test:gate:{tag}", wait)
    _record(tag, "end")
    time.sleep(after)
    return "opened" if opened else "gate timeout"


@task("semantics.flaky-gated", queue=None)
def flaky_gated(tag: str, wait: float = 20) -> str:
    """Fail the first run of `tag`; on the next, wait (at most `wait` seconds) for the test to open its gate."""
    run = _record(tag)
    if run == 1:
        raise RuntimeError(f"flaky {tag} run {run}")
    opened = pass_gate(_redis(), f"test:gate:{tag}", wait)
    _record(tag, "end")
    return "opened" if opened else "gate timeout"


@task("semantics.slow-first", queue=None)
def slow_first(tag: str, sleep: float = 30) -> int:
    """Sleep `sleep` seconds on the first run only (a later run, after a recovery, ends at once)."""
    run = _record(tag)
    if run == 1:
        time.sleep(sleep)
    _record(tag, "end")
    return run


@task("semantics.progress", queue=None)
def report_progress(tag: str) -> str:
    """Report progress half way, wait for the gate of `tag`, then report the end."""
    _record(tag)
    progress.report(10, "starting")
    progress.report(50, "half way", processed=5, failed=1)
    progress.report(message="waiting at the gate")  # keeps percent, processed and failed
    pass_gate(_redis(), f"test:gate:{tag}", 20)
    progress.report(100, "done", processed=10, failed=2)
    _record(tag, "end")
    return "reported"


@task("semantics.fail-while", queue=None)
def fail_while(tag: str) -> str:
    """Fail for good while the Redis key `test:broken:<tag>` exists, else succeed (a fault the test repairs)."""
    _record(tag)
    if _redis().exists(f"test:broken:{tag}"):
        raise PermanentFailure(f"{tag} is broken")
    return "repaired"


@task("semantics.parents", queue=None)
def parents(tag: str) -> dict:
    """Record the run; return what the job's parents returned (app.runtime.flows.parent_results)."""
    from app.runtime.flows import parent_results  # noqa: PLC0415 - the helper under test, as a handler uses it

    _record(tag)
    return parent_results()


@task("semantics.batch-done", queue=None)
def batch_done(tag: str, batch_id: str) -> dict:
    """A batch callback: record the run; return the batch's counts as the callback reads them."""
    from app.runtime.flows import batch_status  # noqa: PLC0415

    _record(tag)
    status = batch_status(_redis(), batch_id)
    return {name: status[name] for name in ("state", "total", "completed", "failed", "canceled")}
