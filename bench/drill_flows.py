"""Drill j: flows (batches with callbacks, chains of dependent jobs) while worker processes are SIGKILLed.

    j  batches with onSuccess and onComplete callbacks, the worker running each batch's last job SIGKILLed mid-run
       or just as it ends, a worker SIGKILLed while it runs a callback, chains of dependent jobs with a link killed
       mid-run: every callback job is created once and released exactly once per batch (onSuccess canceled, never
       run, when a job of its batch failed), no batch is left unfinished, chains run in order with each job
       completed once; and the time from the last job of a batch of 10,000 ending to its callbacks starting
       (issue 23: within 1 s)

Each round holds one job per targeted worker at a gate (bench/drill_tasks.py `drill.gated`) until every other job
of its batch has ended, so the kills land around the last job for certain, however slow the machine. Callback jobs
and their runs are read from Redis (the job hashes, the start of each run its handler recorded) and from the run
history (`job_runs`), never from the drill's own bookkeeping: a callback run twice because its worker was killed
mid-run is at-least-once execution (counted); a callback released twice, or never, is a broken promise.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import redis
from redis import Redis

from app.errors import PermanentFailure
from app.runtime.enqueue import enqueue
from app.runtime.flows import batch_status, create_batch
from app.tasks import task
from bench.drill_kit import (
    ATTEMPTS,
    POLL,
    RQ_TIME,
    SETTLE_TIMEOUT,
    TASK,
    DrillError,
    Fleet,
    Report,
    Servers,
    Sizes,
    child_env,
    job_counts,
    preload_env,
    started_workers,
    statuses,
    wait_ended,
    wait_history,
)
from bench.drill_tasks import GATE_WAIT, GATED, gate_key, open_gate, started_key
from bench.gates import pass_gate
from queues import JOB_KEY_PREFIX, batch_key

QUEUE = "harvest"
ON_SUCCESS = "drill.on-success"
ON_COMPLETE = "drill.on-complete"
DOOMED = "drill.doomed"
#: a batch's callbacks: option name -> task type
CALLBACKS = {"onSuccess": ON_SUCCESS, "onComplete": ON_COMPLETE}
#: seconds each ping job of a batch or a chain sleeps
JOB_SLEEP = 0.005
#: seconds: a kill "as the last job ends" lands this long (at most) after its gate opened (the gate is polled
#: every 20 ms: some kills land before the run's end is recorded, some after)
RACE = 0.04
#: seconds from a batch's last job ending to its callbacks starting, at most (issue 23, for 10,000 jobs)
CALLBACK_LAG = 1.0

_clients: dict[int, redis.Redis] = {}


@dataclass(frozen=True)
class FlowSizes:
    """How hard drill j pushes (bench.drill_kit.Sizes is shared by every drill; j's own sizes live here)."""

    rounds: int = 4  #: rounds of kills
    #: per round, one job held at a gate for each, on its own worker: the last job of a batch killed mid-run
    #: ("mid") or just as it ends ("race"), or a link of a chain killed mid-run ("chain")
    targets: tuple[str, ...] = ("mid", "mid", "race", "race", "chain")
    batch_jobs: int = 100  #: jobs per batch (besides the held last one)
    plain_batches: int = 4  #: batches per round with no kill aimed at them
    chains: int = 6  #: chains of dependent jobs per round
    chain_length: int = 6  #: jobs per chain
    big: int = 10_000  #: jobs of the batch whose callbacks are timed


FULL_FLOWS = FlowSizes()
#: --quick (the suite's form, untimed)
QUICK_FLOWS = FlowSizes(rounds=2, targets=("mid", "race", "chain"), batch_jobs=20, plain_batches=2, chains=3,
                        chain_length=4, big=1000)  # fmt: skip


# -- the drill's task types (registered in its worker processes through bench/preload) -----------------------------


def callback_runs_key(batch_id: str, name: str) -> str:
    """Redis list of the times a callback (`name`: onSuccess, onComplete) of `batch_id` started a run."""
    return f"drill:callback:{batch_id}:{name}"


def callback_tag(batch_id: str) -> str:
    """The gate tag of `batch_id`'s onComplete when it is held (a worker is killed while it runs)."""
    return f"callback-{batch_id}"


def _redis() -> redis.Redis:
    pid = os.getpid()
    if pid not in _clients:
        _clients[pid] = redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=None)
    return _clients[pid]


def _callback(name: str, batch_id: str, gate: bool) -> str:
    client = _redis()
    client.rpush(callback_runs_key(batch_id, name), time.time())
    if gate and not pass_gate(client, gate_key(callback_tag(batch_id)), GATE_WAIT):
        return "gate timeout"
    return name


@task(ON_SUCCESS, queue=None)
def on_success(batch_id: str, gate: bool = False) -> str:
    """A batch's onSuccess callback: record the run's start; with `gate`, wait at the batch's gate."""
    return _callback("onSuccess", batch_id, gate)


@task(ON_COMPLETE, queue=None)
def on_complete(batch_id: str, gate: bool = False) -> str:
    """A batch's onComplete callback: record the run's start; with `gate`, wait at the batch's gate."""
    return _callback("onComplete", batch_id, gate)


@task(DOOMED, queue=None)
def doomed(tag: str) -> None:
    """Fail for good (its batch then fails: onSuccess is canceled, onComplete runs)."""
    raise PermanentFailure(f"doomed {tag}")


# -- the drill -----------------------------------------------------------------------------------------------------


@dataclass
class _Batch:
    kind: str  #: mid, race (a kill around its last job), plain, big
    id: str
    job_ids: list[str]
    callbacks: dict[str, str]
    doomed: str | None = None  #: the id of its job that fails for good
    held: tuple[str, str] | None = None  #: (tag, job id) of its last job, held at a gate
    callback_killed: bool = False  #: its onComplete is held at a gate and its worker killed


@dataclass
class _Run:
    """What the drill did (its ids and kills); what happened is read from Redis and `job_runs`."""

    batches: list[_Batch] = field(default_factory=list)
    chain_jobs: list[str] = field(default_factory=list)
    edges: list[tuple[str, str]] = field(default_factory=list)  #: (parent, child)
    kills: Counter = field(default_factory=Counter)
    race_jobs: list[str] = field(default_factory=list)
    killed_links: list[str] = field(default_factory=list)


def _worker_of(conn: Redis, job_id: str) -> str | None:
    """The name (`--name`) of the worker process running `job_id`, from its hash."""
    status, worker = conn.hmget(JOB_KEY_PREFIX + job_id, "status", "worker_name")
    if status != b"started" or not worker:
        return None
    return worker.decode().split(".", 1)[0]


def _wait(condition, fleet: Fleet, what: str, timeout: float = SETTLE_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        fleet.check_alive()
        if time.monotonic() > deadline:
            raise DrillError(f"{what} did not happen in {timeout:g} s")
        time.sleep(POLL)


def _restart(fleet: Fleet, name: str) -> None:
    fleet.kill(name)
    fleet.worker(QUEUE, name)  # a new incarnation; the dead one's job waits for its lease to run out


def _round(conn: Redis, fleet: Fleet, flow: FlowSizes, number: int, rng: random.Random, run: _Run) -> list[str]:
    """Create one round's chains and batches, kill workers around their held jobs; returns every id to wait for."""
    opts = {"queue": QUEUE, "attempts": ATTEMPTS}
    ping = {"sleep": JOB_SLEEP}
    held: list[tuple[str, str, str]] = []  # (kind, tag, job id)
    ids: list[str] = []

    tails = []
    for c in range(flow.chains):
        chain: list[str] = []
        for n in range(flow.chain_length):
            options = {**opts, "dependsOn": [chain[-1]]} if chain else opts
            gated = c < flow.targets.count("chain") and n == flow.chain_length // 2
            tag = f"j{number}-chain{c}"
            chain.append(enqueue(conn, GATED if gated else TASK, {"tag": tag} if gated else dict(ping), options).id)
            if gated:
                held.append(("chain", tag, chain[-1]))
                run.killed_links.append(chain[-1])
            if n:
                run.edges.append((chain[-2], chain[-1]))
        tails.append(chain[-1])
        run.chain_jobs += chain
    join = enqueue(conn, TASK, dict(ping), {**opts, "dependsOn": tails}).id  # a job with several parents
    run.edges += [(tail, join) for tail in tails]
    run.chain_jobs.append(join)
    ids += run.chain_jobs[-(flow.chains * flow.chain_length + 1) :]  # this round's

    kinds = [k for k in flow.targets if k != "chain"] + ["plain"] * flow.plain_batches
    doomed_kind = "mid" if number % 2 == 0 else "race"
    for b, kind in enumerate(kinds):
        first_of_kind = kinds.index(kind) == b
        fails = first_of_kind and kind in ("plain", doomed_kind)
        jobs = [(TASK, dict(ping), opts) for _ in range(flow.batch_jobs)]
        if fails:
            jobs.insert(len(jobs) // 2, (DOOMED, {"tag": f"j{number}-b{b}"}, {**opts, "attempts": 1}))
        tag = f"j{number}-b{b}"
        if kind != "plain":
            jobs.append((GATED, {"tag": tag}, opts))
        gate_callback = kind == "race" and first_of_kind
        made = create_batch(conn, jobs, on_success=(ON_SUCCESS, {}, opts),
                            on_complete=(ON_COMPLETE, {"gate": gate_callback}, opts))  # fmt: skip
        batch = _Batch(kind, made.id, made.job_ids, made.callbacks, callback_killed=gate_callback)
        if fails:
            batch.doomed = made.job_ids[flow.batch_jobs // 2]
        if kind != "plain":
            batch.held = (tag, made.job_ids[-1])
            held.append((kind, tag, made.job_ids[-1]))
        run.batches.append(batch)
        ids += [*made.job_ids, *made.callbacks.values()]

    # every held job at its gate, and every other job of its batch ended: the kills land around the last job
    targeted = [b for b in run.batches[-len(kinds) :] if b.held]

    def ready() -> bool:
        at_gates = all(conn.llen(started_key(tag)) and _worker_of(conn, job) for _, tag, job in held)
        return at_gates and all(int(conn.hget(batch_key(b.id), "pending") or 0) == 1 for b in targeted)

    _wait(ready, fleet, f"round {number}: every held job at its gate")
    for kind, tag, job in held:
        name = _worker_of(conn, job)
        if kind == "race":
            open_gate(conn, tag)
            time.sleep(rng.uniform(0, RACE))
            _restart(fleet, name)
            run.race_jobs.append(job)
            # the killed run took the token without recording its end: its retry needs another
            if conn.hget(JOB_KEY_PREFIX + job, "status") != b"finished" and not conn.llen(gate_key(tag)):
                open_gate(conn, tag)
        else:
            _restart(fleet, name)
            open_gate(conn, tag)  # for the retry, once the killed run's lease has run out
        run.kills[kind] += 1

    for batch in targeted:
        if not batch.callback_killed:
            continue
        callback = batch.callbacks["onComplete"]
        started = callback_runs_key(batch.id, "onComplete")
        _wait(lambda callback=callback, started=started: conn.llen(started) and _worker_of(conn, callback),
              fleet, f"round {number}: the held onComplete callback to start")  # fmt: skip
        _restart(fleet, _worker_of(conn, callback))
        open_gate(conn, callback_tag(batch.id))
        run.kills["callback"] += 1
    return ids


def _big_batch(conn: Redis, fleet: Fleet, size: int, run: _Run) -> tuple[list[str], float]:
    opts = {"queue": QUEUE, "attempts": ATTEMPTS}
    began = time.monotonic()
    made = create_batch(conn, [(TASK, {}, opts) for _ in range(size)], on_success=(ON_SUCCESS, {}, opts),
                        on_complete=(ON_COMPLETE, {}, opts))  # fmt: skip
    created = time.monotonic() - began
    run.batches.append(_Batch("big", made.id, made.job_ids, made.callbacks))
    return [*made.job_ids, *made.callbacks.values()], created


def _epoch(value: bytes | None) -> float | None:
    if not value:
        return None
    return datetime.strptime(value.decode(), RQ_TIME).replace(tzinfo=UTC).timestamp()


def _callback_jobs(conn: Redis) -> dict[tuple[str, str], list[str]]:
    """(batch id, onSuccess | onComplete) -> ids of the callback jobs Redis holds for it."""
    found: dict[tuple[str, str], list[str]] = defaultdict(list)
    names = {kind: name for name, kind in CALLBACKS.items()}
    keys = list(conn.scan_iter(match=JOB_KEY_PREFIX + "*", count=1000))
    with conn.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hmget(key, "callback_of", "description")  # a callback names its batch in callback_of
        for key, (batch, description) in zip(keys, pipe.execute(), strict=True):
            kind = description and description.decode().split("(", 1)[0]
            if batch and kind in names:
                found[(batch.decode(), names[kind])].append(key.decode()[len(JOB_KEY_PREFIX) :])
    return found


def _runs(database_url: str) -> dict[str, list[tuple[str, float | None, float | None]]]:
    """job id -> its rows in `job_runs` as (status, started_at, ended_at), by attempt."""
    rows: dict[str, list] = defaultdict(list)
    with psycopg.connect(database_url) as db:
        for job_id, status, started, ended in db.execute(
            "SELECT job_id, status, started_at, ended_at FROM job_runs ORDER BY job_id, attempt"
        ):
            rows[job_id].append((status, started and started.timestamp(), ended and ended.timestamp()))
    return rows


def _lag(conn: Redis, batch: _Batch, name: str, released: bool = False) -> float | None:
    """Seconds from the end of the batch's last job (its hash's `ended_at`) to the first start of its callback
    `name` (as its handler recorded it); with `released`, to the callback's release (its `enqueued_at`)."""
    if released:
        first = _epoch(conn.hget(JOB_KEY_PREFIX + batch.callbacks[name], "enqueued_at"))
    else:
        first = conn.lindex(callback_runs_key(batch.id, name), 0)
    if first is None:
        return None
    ends = []
    for start in range(0, len(batch.job_ids), 1000):
        with conn.pipeline(transaction=False) as pipe:
            for job_id in batch.job_ids[start : start + 1000]:
                pipe.hget(JOB_KEY_PREFIX + job_id, "ended_at")
            ends += [e for e in map(_epoch, pipe.execute()) if e is not None]
    return float(first) - max(ends) if ends else None


def drill_j(servers: Servers, sizes: Sizes, logs: Path) -> Report:
    """Batches with callbacks and chains of dependent jobs while workers are SIGKILLed: callbacks fire once."""
    flow = FULL_FLOWS if sizes.timed else QUICK_FLOWS
    workers = len(flow.targets) + 1  # one beyond the held jobs keeps the other jobs flowing meanwhile
    per_round = len(flow.targets) - flow.targets.count("chain") + flow.plain_batches
    report = Report(
        "j",
        f"{flow.rounds} rounds of {per_round} batches (onSuccess + onComplete) and {flow.chains} chains of "
        f"{flow.chain_length} dependent jobs, workers SIGKILLed around the last jobs and during a callback, then a "
        f"batch of {flow.big:,}; {workers} worker processes on {QUEUE}",
    )
    redis_server, database_url, conn = servers.stage("j")
    env = preload_env(child_env(servers.root, redis_server.url, database_url), "bench.drill_tasks",
                      "bench.drill_flows")  # fmt: skip
    rng = random.Random(23)
    run = _Run()
    with Fleet(env, logs) as fleet:
        names = started_workers(fleet, conn, QUEUE, workers, "j")
        for number in range(flow.rounds):
            ids = _round(conn, fleet, flow, number, rng, run)
            wait_ended(conn, ids, fleet=fleet)
            fleet.wait_registered(conn, names)
        big_ids, created = _big_batch(conn, fleet, flow.big, run)
        big_took = wait_ended(conn, big_ids, fleet=fleet)
        wait_history(conn)
        fleet.check_alive()
    _judge(report, conn, database_url, flow, run)
    big = run.batches[-1]
    lags = {name: _lag(conn, big, name) for name in CALLBACKS}
    report.figures[f"batch of {flow.big:,}: created in / every job and callback ended in"] = (
        f"{created:.1f} / {big_took:.1f} s"
    )
    for name, lag in lags.items():
        shown = f"{lag * 1000:.0f} ms" if lag is not None else "never"
        report.figures[f"batch of {flow.big:,}: last job ended to {name} started"] = shown
    calm = [lag for b in run.batches if b.kind == "plain"
            for lag in (_lag(conn, b, "onComplete"),) if lag is not None]  # fmt: skip
    released = [lag for b in run.batches if b.kind == "plain"
                for lag in (_lag(conn, b, "onComplete", released=True),) if lag is not None]  # fmt: skip
    if released:
        report.figures["other batches: last job to onComplete released (its enqueued_at), max"] = (
            f"{max(released) * 1000:.0f} ms"
        )
    if calm:
        label = "other batches (callbacks queued behind the round's jobs): last job to onComplete, median / max"
        report.figures[label] = f"{statistics.median(calm) * 1000:.0f} / {max(calm) * 1000:.0f} ms"
    report.promise(all(lag is not None for lag in lags.values()), f"the batch of {flow.big:,} fired no callback")
    if sizes.timed:
        late = [name for name, lag in lags.items() if lag is not None and lag > CALLBACK_LAG]
        report.promise(not late, f"batch of {flow.big:,}: {', '.join(late)} started more than {CALLBACK_LAG:g} s "
                                 "after its last job ended")  # fmt: skip
    return report


def _judge(report: Report, conn: Redis, database_url: str, flow: FlowSizes, run: _Run) -> None:
    """What every batch, callback and chain went through, read from Redis and `job_runs`; the promises."""
    rows = _runs(database_url)
    made = _callback_jobs(conn)
    states: Counter = Counter()
    wrong_state, unfinished = [], []
    created_once = fired_once = success_canceled = never = twice = rerun = 0
    expected_fired = expected_canceled = 0
    for batch in run.batches:
        shown = batch_status(conn, batch.id) or {}
        state = shown.get("state")
        states[state] += 1
        if state not in ("completed", "failed") or shown.get("pending") != 0:
            unfinished.append(f"{batch.kind} batch {batch.id}: {shown}")
        elif state != ("failed" if batch.doomed else "completed") or shown.get("total") != len(batch.job_ids):
            wrong_state.append(f"{batch.kind} batch {batch.id}: {shown}")
        for name, callback in batch.callbacks.items():
            held = made.get((batch.id, name), [])
            created_once += held == [callback]
            status = statuses(conn, [callback])[callback]
            history = [s for s, _, _ in rows.get(callback, ())]
            completed, abandoned = history.count("completed"), history.count("abandoned")
            handler_runs = conn.llen(callback_runs_key(batch.id, name))
            should_run = name == "onComplete" or not batch.doomed
            if should_run:
                expected_fired += 1
                # released once: one completed run, and no run beyond those a kill cut short
                if status == "finished" and completed == 1 and handler_runs <= 1 + abandoned:
                    fired_once += 1
                    rerun += handler_runs > 1 or abandoned > 0
                elif status == "deferred":
                    never += 1
                    report.notes.append(f"{name} of {batch.kind} batch {batch.id} never released: {history}")
                else:
                    twice += 1
                    report.notes.append(f"{name} of {batch.kind} batch {batch.id}: status {status}, runs "
                                        f"{history}, {handler_runs} handler start(s)")  # fmt: skip
            else:
                expected_canceled += 1
                if status == "canceled" and handler_runs == 0 and completed == 0:
                    success_canceled += 1
                else:
                    twice += status != "deferred"
                    never += status == "deferred"
                    report.notes.append(f"onSuccess of failed {batch.kind} batch {batch.id}: status {status}, runs "
                                        f"{history}, {handler_runs} handler start(s)")  # fmt: skip
    callbacks = sum(len(b.callbacks) for b in run.batches)

    # chains: each child's first run starts after its parent's completed run ended (job_runs)
    out_of_order = []
    for parent, child in run.edges:
        ended = [e for s, _, e in rows.get(parent, ()) if s == "completed"]
        started = [s for _, s, _ in rows.get(child, ()) if s is not None]
        if not ended or not started or min(started) < max(ended):
            out_of_order.append((parent, child, ended, started))
    for parent, child, ended, started in out_of_order[:5]:
        report.notes.append(f"out of order: child {child} started {started}, parent {parent} completed {ended}")

    doomed = [b.doomed for b in run.batches if b.doomed]
    doomed_once = sum(1 for j in doomed if statuses(conn, [j])[j] == "failed"
                      and [s for s, _, _ in rows.get(j, ())] == ["failed"])  # fmt: skip
    race_rerun = sum(1 for j in run.race_jobs if "abandoned" in [s for s, _, _ in rows.get(j, ())])
    report.figures.update(
        {
            "batches (kill around the last job / none aimed / the big one)": (
                f"{sum(b.kind in ('mid', 'race') for b in run.batches)} / "
                f"{sum(b.kind == 'plain' for b in run.batches)} / 1"
            ),
            "batches ended completed / failed (a job failed for good)": (
                f"{states['completed']} / {states['failed']}"
            ),
            "batches not ended (stuck)": len(unfinished),
            "batches in the wrong state": len(wrong_state),
            "SIGKILL: last job of a batch mid-run": run.kills["mid"],
            "SIGKILL: last job of a batch as it ended (landed before its end was recorded)": (
                f"{run.kills['race']} ({race_rerun})"
            ),
            "SIGKILL: a callback mid-run": run.kills["callback"],
            "SIGKILL: a chain link mid-run": run.kills["chain"],
            "callback jobs created once (Redis) / callbacks": f"{created_once} / {callbacks}",
            "callbacks fired exactly once / due to fire": f"{fired_once} / {expected_fired}",
            "onSuccess canceled unrun (batch failed) / due": f"{success_canceled} / {expected_canceled}",
            "callbacks never released": never,
            "callbacks released more than once": twice,
            "callbacks run again after a kill (at-least-once)": rerun,
            "chain links (parent -> child) run in order": f"{len(run.edges) - len(out_of_order)} / {len(run.edges)}",
            "jobs failing for good, failed once": f"{doomed_once} / {len(doomed)}",
        }
    )
    for text in (unfinished + wrong_state)[:5]:
        report.notes.append(text)
    acked = [j for b in run.batches for j in b.job_ids if j not in set(doomed)] + run.chain_jobs
    report.figures["acknowledged"] = len(acked)
    job_counts(report, conn, database_url, acked, QUEUE)
    report.notes.append("the queue's counter of abandoned runs also counts the callbacks' (the line above counts "
                        "the jobs of batches and chains)")
    report.promise(not unfinished, f"{len(unfinished)} batch(es) never ended")
    report.promise(not wrong_state, f"{len(wrong_state)} batch(es) ended in the wrong state or count")
    report.promise(created_once == callbacks, f"{callbacks - created_once} callback(s) not created exactly once")
    report.promise(fired_once == expected_fired, f"{expected_fired - fired_once} callback(s) did not fire exactly once")
    left = expected_canceled - success_canceled
    report.promise(left == 0, f"{left} onSuccess of a failed batch not canceled unrun")
    report.promise(never == 0, f"{never} callback(s) never released")
    report.promise(twice == 0, f"{twice} callback(s) released more than once")
    report.promise(not out_of_order, f"{len(out_of_order)} dependent job(s) started before their parent completed")
    report.promise(doomed_once == len(doomed), "a job failing for good did not fail once")
    report.promise(run.kills["callback"] == flow.rounds, "a callback's worker was not killed mid-run")
