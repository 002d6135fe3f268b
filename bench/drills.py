"""Fault drills: damage a running bullrq on purpose and count what every job went through.

    a  SIGKILL random worker processes every few seconds while jobs flow: every job ends finished exactly once
       from the caller's view (execution is at-least-once: the runs of killed workers are counted and reported)
    b  restart Redis (append-only file on; SIGKILL and SIGTERM in turn) while jobs are submitted and run: no
       acknowledged job is lost
    c  stop PostgreSQL for a while (30 s; 5 s with --quick) under load: jobs keep running, and every run-history
       row arrives once it is back
    d  SIGKILL the active scheduler again and again over many per-second cron slots: no slot missed, none doubled
    e  `workers stop` while long jobs run: with time to spare they finish; past --timeout the worker is killed
       and its job requeued; either way each job completes exactly once
    f  SIGKILL the Redis master of a Sentinel deployment (a master, a replica, three sentinels) under load:
       workers, scheduler and web follow the promoted replica; no job a replica confirmed is lost; duplicates
       and the time each part took to work again are reported (bench/drill_sentinel.py)
    g  Redis down for a minute (25 s with --quick; past the lease either way), started again on its port from its
       append-only file, under load with workers, a scheduler and the web app: no acknowledged job lost, no
       finished job run again, no false failure (bench/drill_outages.py)
    h  FLUSHALL under load: every worker visible again within 10 s, the schedule fires once per slot, no history
       row left `started`
    i  a worker restarting under its previous name (pid 1, same hostname: a container) SIGKILLed mid-job: it
       serves again within 5 s and its job is retried once
    k  SIGKILL workers under 2,000 jobs while RQ's tools read all the time (every 100 ms: a plain `rq info`, the
       registry counts of `rq info --interval`, which run RQ's StartedJobRegistry.cleanup, and rq-dashboard's
       queue, worker and running-job endpoints): reading changes nothing; every abandoned run is taken back by
       bullrq alone, with its history row, and each job completes exactly once
    j  batches with onSuccess/onComplete callbacks and chains of dependent jobs, workers SIGKILLed around the last
       job of each batch (mid-run, and as it ends), during a callback and during a chain link: every callback job
       is created once and released exactly once (reruns after a kill counted), no batch left unfinished, chains
       run in order, each job completed once; and the time from the last job of a batch of 10,000 ending to its
       callbacks starting (within 1 s) (bench/drill_flows.py)

Each drill starts what it needs: a throwaway redis-server of its own, a database on one throwaway PostgreSQL shared
by the drills of a run (both through `app.local.servers`), real worker processes (`workers run QUEUE --name N`, or
`workers start`/`stop` for e) and real scheduler processes (`bullrq scheduler`). What ran is read back from Redis
(each job's status) and from the run history in PostgreSQL (`job_runs`: one row per attempt), never from the
drill's own bookkeeping. A table per drill says what was submitted, acknowledged, completed once, run more than
once, lost, and how long recovery took; the exit status is 1 when a promise was broken.

    python -m bench.drills [a b c d e f g h i j k] [--quick] [--jobs N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from redis import Redis
from redis.exceptions import RedisError

from app.errors import ServerError
from app.local.servers import free_port
from app.runtime.enqueue import enqueue
from app.runtime.leases import LEASE
from app.scheduling.cron import Cron
from app.scheduling.scheduler import LEADER_TTL, RENEW
from app.store.history import CLAIM_AFTER, GROUP
from app.tasks import queue_keys
from bench.drill_flows import drill_j
from bench.drill_kit import (
    ATTEMPTS,
    POLL,
    PROJECT,
    QUICK,
    REGISTER_TIMEOUT,
    RQ_TIME,
    SETTLE_TIMEOUT,
    TASK,
    DrillError,
    Fleet,
    Report,
    Servers,
    Sizes,
    Submitter,
    child_env,
    completed_count,
    job_counts,
    preload_env,
    started_workers,
    statuses,
    wait_ended,
    wait_history,
)
from bench.drill_outages import drill_g, drill_h, drill_i
from bench.drill_sentinel import drill_f
from bench.drill_tasks import GATED, open_gate, started_key
from queues import HISTORY_STREAM, JOB_KEY_PREFIX

# -- the drills ----------------------------------------------------------------------------------------------------


def drill_a(servers: Servers, sizes: Sizes, logs: Path) -> Report:
    """SIGKILL random workers while jobs flow; each killed run is recovered from its lease and retried."""
    queue = "harvest"
    report = Report(
        "a",
        f"SIGKILL a random worker every {sizes.kill_every:g} s ({sizes.kills} kills) during "
        f"{sizes.jobs:,} jobs; {sizes.workers} worker processes on {queue}",
    )
    redis, database_url, conn = servers.stage("a")
    rng = random.Random(8)
    env = preload_env(child_env(servers.root, redis.url, database_url), "bench.drill_tasks")
    with Fleet(env, logs) as fleet:
        names = started_workers(fleet, conn, queue, sizes.workers, "a")
        submitter = Submitter(redis.url, queue, sizes.jobs, sizes.kills * sizes.kill_every, sizes.job_sleep)
        submitter.start()
        kills: list[float] = []
        running_at_kill = 0
        # the first kill is certain to hit a running job: the worker holding a job at a gate; the others are random
        held = enqueue(conn, GATED, {"tag": "a-held"}, {"queue": queue, "attempts": ATTEMPTS}).id
        for n in range(sizes.kills):
            time.sleep(sizes.kill_every * rng.uniform(0.6, 1.4))
            if n == 0:  # its handler is at the gate (its start recorded), not still in the worker's bookkeeping
                _wait_started(conn, ["a-held"])
                name = conn.hget(JOB_KEY_PREFIX + held, "worker_name").decode().split(".", 1)[0]
            else:
                name = rng.choice(names)
            running_at_kill += conn.zcard(queue_keys(queue).started)
            fleet.kill(name)
            kills.append(time.time())
            if n == 0:
                open_gate(conn, "a-held")  # for its retry, once the lease of the killed run runs out
            fleet.worker(queue, name)  # a new incarnation; the dead one's job waits for its lease to run out
        submitter.finish()
        fleet.wait_registered(conn, names)
        acked = [*submitter.acked, held]
        wait_ended(conn, acked, fleet=fleet)
        all_ended = time.time()
        lag = wait_history(conn)
        fleet.check_alive()
    report.figures.update(
        {
            "jobs submitted (and one held at a gate)": f"{sizes.jobs} + 1",
            "acknowledged": len(acked),
            "workers SIGKILLed": len(kills),
            "runs of the held job (killed, then retried)": conn.llen(started_key("a-held")),
        }
    )
    runs = job_counts(report, conn, database_url, acked, queue)
    recovered = []
    for rows in runs.values():
        for _, status, ended in rows:
            if status == "abandoned" and ended is not None:
                before = [k for k in kills if k <= ended.timestamp()]
                if before:
                    recovered.append(ended.timestamp() - before[-1])
    report.figures[f"kill to recovery of its job, max (lease {LEASE} s)"] = (
        f"{max(recovered):.1f} s" if recovered else "-"
    )
    report.figures["last kill to every job ended"] = f"{all_ended - kills[-1]:.1f} s"
    report.figures["last job to every history row in PostgreSQL"] = f"{lag:.1f} s"
    if lag > 2:
        report.notes.append(
            f"history rows a killed worker had read but not yet written wait until they are {CLAIM_AFTER} s old, "
            "then a live worker claims them (by design: app/store/history.py CLAIM_AFTER)"
        )
    report.notes.append(
        f"jobs running on any worker at the moments of the kills (sum): {running_at_kill}; each job allows "
        f"{ATTEMPTS} attempts, so a run lost to a kill is retried, not failed"
    )
    report.promise(len(submitter.acked) == sizes.jobs, "some submissions were not acknowledged (Redis was not hurt)")
    report.promise(conn.llen(started_key("a-held")) == 2, "the held job was not run twice (killed, then retried)")
    return report


def drill_c(servers: Servers, sizes: Sizes, logs: Path) -> Report:
    """Stop PostgreSQL under load: jobs go on, their history rows wait in Redis and all arrive afterwards."""
    queue = "harvest"
    report = Report(
        "c",
        f"stop PostgreSQL for {sizes.outage:g} s during {sizes.c_jobs:,} jobs; "
        f"{sizes.workers} worker processes on {queue}",
    )
    redis, database_url, conn = servers.stage("c")

    with Fleet(child_env(servers.root, redis.url, database_url), logs) as fleet:
        started_workers(fleet, conn, queue, sizes.workers, "c")
        warm = 1.0
        submitter = Submitter(redis.url, queue, sizes.c_jobs, sizes.outage + 2 * warm, sizes.job_sleep)
        submitter.start()
        time.sleep(warm)
        servers.pg.stop()
        down_at, before = time.time(), completed_count(conn, queue)
        time.sleep(sizes.outage)
        during = completed_count(conn, queue) - before
        waiting_rows = conn.xlen(HISTORY_STREAM)
        servers.pg.start()
        up_at = time.time()
        submitter.finish()
        wait_ended(conn, submitter.acked, fleet=fleet)
        lag = wait_history(conn)
        arrived_at = time.time()
        fleet.check_alive()
    report.figures.update({"jobs submitted": sizes.c_jobs, "acknowledged": len(submitter.acked)})
    runs = job_counts(report, conn, database_url, submitter.acked, queue)
    rows = sum(len(r) for r in runs.values())
    missing = sum(1 for j in submitter.acked if not runs.get(j))
    report.figures.update(
        {
            "jobs completed while PostgreSQL was down": during,
            "history rows waiting in Redis when it came back": waiting_rows,
            "history rows in PostgreSQL / jobs": f"{rows} / {len(submitter.acked)}",
            "jobs without a history row": missing,
            "PostgreSQL back to every row written": f"{arrived_at - up_at:.1f} s",
            "stream empty after the last job": f"{lag:.1f} s",
        }
    )
    report.notes.append(f"PostgreSQL was down from {_clock(down_at)} to {_clock(up_at)}")
    report.promise(during > 0, "no job completed while PostgreSQL was down")
    report.promise(missing == 0, f"{missing} job(s) have no history row")
    report.promise(rows == len(submitter.acked), f"{rows} history rows for {len(submitter.acked)} single-run jobs")
    return report


#: the admin token of drill k's web process
K_TOKEN = "drill-k-token-0123456789abcdef"
#: a job hash field RQ's Job.save writes and bullrq never does
RQ_SAVE_MARK = "success_callback_name"
#: RQ's own command line, installed beside this interpreter
RQ_CLI = str(Path(sys.executable).parent / "rq")


class _Readers:
    """RQ's tools and rq-dashboard reading a queue every `every` seconds, in threads; counts what went wrong."""

    def __init__(self, redis_url: str, web_port: int, queue: str, every: float):
        self.redis_url, self.queue, self.every = redis_url, queue, every
        base = f"http://127.0.0.1:{web_port}/api/admin/queues/0/data"
        self.urls = [f"{base}/queues.json", f"{base}/workers.json", f"{base}/jobs/{queue}/started/8/asc/1.json"]
        self.counts: Counter = Counter()
        self.problems: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._rq_info, daemon=True),
                         threading.Thread(target=self._dashboard, daemon=True)]  # fmt: skip

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def _problem(self, text: str) -> None:
        self.counts["problems"] += 1
        if len(self.problems) < 5:
            self.problems.append(text)

    def _rq_info(self) -> None:
        while not self._stop.is_set():
            done = subprocess.run([RQ_CLI, "info", "-u", self.redis_url], capture_output=True, text=True, timeout=120)
            self.counts["rq info"] += 1
            if done.returncode != 0 or "Traceback" in done.stderr:
                self._problem(f"rq info exited {done.returncode}: {done.stderr[-300:]}")
            self._stop.wait(self.every)

    def _dashboard(self) -> None:
        while not self._stop.is_set():
            for url in self.urls:
                request = urllib.request.Request(url, headers={"Authorization": f"Bearer {K_TOKEN}"})
                try:
                    with urllib.request.urlopen(request, timeout=10) as response:
                        json.loads(response.read())
                except (urllib.error.URLError, OSError, ValueError) as exc:
                    self._problem(f"GET {url}: {exc}")
                self.counts["dashboard requests"] += 1
            self._stop.wait(self.every)


def _web_ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def drill_k(servers: Servers, sizes: Sizes, logs: Path) -> Report:
    """SIGKILL workers while RQ's tools and rq-dashboard read in a loop: reading changes nothing."""
    queue = "harvest"
    report = Report(
        "k",
        f"SIGKILL a random worker every {sizes.kill_every:g} s ({sizes.kills} kills) during {sizes.k_jobs:,} jobs "
        f"while `rq info` and rq-dashboard read every {sizes.read_every:g} s; {sizes.workers} workers on {queue}",
    )
    redis, database_url, conn = servers.stage("k")
    rng = random.Random(9)
    web_port = free_port()
    with Fleet(child_env(servers.root, redis.url, database_url, ADMIN_TOKEN=K_TOKEN), logs) as fleet:
        names = started_workers(fleet, conn, queue, sizes.workers, "k")
        fleet.web("k-web", web_port)
        deadline = time.monotonic() + REGISTER_TIMEOUT
        while not _web_ready(web_port):
            fleet.check_alive("k-web")
            if time.monotonic() > deadline:
                raise DrillError(f"the web app did not answer /readyz in {REGISTER_TIMEOUT} s")
            time.sleep(POLL)
        # RQ's own monitor refreshing: each refresh counts the started registry with RQ's cleanup
        fleet.spawn("k-rq-info", [RQ_CLI, "info", "-u", redis.url, "--interval", str(sizes.read_every)])
        readers = _Readers(redis.url, web_port, queue, sizes.read_every)
        readers.start()
        submitter = Submitter(redis.url, queue, sizes.k_jobs, sizes.kills * sizes.kill_every, sizes.job_sleep)
        submitter.start()
        kills = 0
        for _ in range(sizes.kills):
            time.sleep(sizes.kill_every * rng.uniform(0.6, 1.4))
            name = rng.choice(names)
            fleet.kill(name)
            kills += 1
            fleet.worker(queue, name)
        submitter.finish()
        fleet.wait_registered(conn, names)
        wait_ended(conn, submitter.acked, fleet=fleet)
        wait_history(conn)
        readers.stop()
        fleet.check_alive()  # `rq info --interval` included: RQ's cleanup never broke on our data
    report.figures.update(
        {"jobs submitted": sizes.k_jobs, "acknowledged": len(submitter.acked), "workers SIGKILLed": kills,
         "plain `rq info` runs": readers.counts["rq info"],
         "rq-dashboard requests": readers.counts["dashboard requests"],
         "readings that failed": readers.counts["problems"]}
    )  # fmt: skip
    job_counts(report, conn, database_url, submitter.acked, queue)
    in_history, in_counter = map(int, report.figures["abandoned runs in history / in the queue's counter"].split("/"))
    # RQ's cleanup, had it taken a lease, would have saved the job with RQ's Job.save: fields bullrq never writes
    pipe = conn.pipeline(transaction=False)
    for job_id in submitter.acked:
        pipe.hexists(JOB_KEY_PREFIX + job_id, RQ_SAVE_MARK)
    rewritten = sum(pipe.execute())
    report.figures[f"jobs saved by RQ's cleanup (with `{RQ_SAVE_MARK}`)"] = rewritten
    for problem in readers.problems:
        report.notes.append(problem)
    report.promise(len(submitter.acked) == sizes.k_jobs, "some submissions were not acknowledged (Redis was not hurt)")
    report.promise(readers.counts["rq info"] > 0 and readers.counts["dashboard requests"] > 0, "nothing was read")
    report.promise(readers.counts["problems"] == 0, f"{readers.counts['problems']} reading(s) failed")
    report.promise(in_history == in_counter, f"abandoned runs: {in_history} in history, {in_counter} counted")
    report.promise(rewritten == 0, f"RQ's cleanup took {rewritten} job(s) back with RQ's semantics")
    more = report.figures["run more than once (an abandoned run, then a retry)"]
    report.promise(more == in_history, f"{more} job(s) ran more than once, {in_history} abandoned run(s) recorded")
    return report


def _clock(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%H:%M:%S")


def _workers_cli(env: dict, *args: str, timeout: float = 120) -> tuple[float, str]:
    """Run `workers ARGS` (the CLI a person uses); returns (seconds it took, its output)."""
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "app.cli.workers", *args], cwd=PROJECT, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        raise DrillError(f"workers {' '.join(args)} exited {done.returncode}:\n{output}")
    return time.monotonic() - start, output


def _wait_status(conn: Redis, job_ids: list[str], wanted: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while any(s != wanted for s in statuses(conn, job_ids).values()):
        if time.monotonic() > deadline:
            raise DrillError(f"jobs not {wanted} after {timeout} s: {statuses(conn, job_ids)}")
        time.sleep(POLL)


def _wait_started(conn: Redis, tags: list[str], timeout: float = 60) -> None:
    """Wait until a `drill.gated` run of each of `tags` is at its gate."""
    deadline = time.monotonic() + timeout
    while not all(conn.llen(started_key(tag)) for tag in tags):
        if time.monotonic() > deadline:
            raise DrillError(f"gated jobs {tags} did not start in {timeout} s")
        time.sleep(POLL)


def _stops_seen(home: Path, names: list[str]) -> list[int]:
    """How many warm-shutdown requests each worker process `names` has logged so far."""
    seen = []
    for name in names:
        log = home / "logs" / "workers" / f"{name}.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        seen.append(text.count("warm shutdown requested"))
    return seen


def drill_e(servers: Servers, sizes: Sizes, logs: Path) -> Report:
    """`workers stop` while long jobs run: within --timeout they finish; past it they are killed and requeued."""
    queues = list(sizes.stop_queues)
    report = Report(
        "e",
        f"`workers stop` during long jobs (held at a gate until every worker has seen the stop) on "
        f"{', '.join(queues)}: once with time to finish, once with --timeout 1 (killed, requeued)",
    )
    redis, database_url, conn = servers.stage("e")
    root = servers.root / "e"
    env = preload_env(child_env(root, redis.url, database_url), "bench.drill_tasks")
    root.mkdir(exist_ok=True)
    home = root / "home"
    names = [f"{q}-1" for q in queues]

    def submit_gated(phase: str) -> list[str]:
        options = {"attempts": ATTEMPTS}
        return [enqueue(conn, GATED, {"tag": f"{phase}-{q}"}, {**options, "queue": q}).id for q in queues]

    def submit_behind() -> list[str]:
        return [enqueue(conn, TASK, {}, {"queue": q, "attempts": ATTEMPTS}).id for q in queues]

    acked: list[str] = []
    try:
        # 1. time to spare: each long job finishes, the jobs waiting behind it stay queued for the next start. The
        # long jobs wait at a gate opened only once every worker has logged the stop, so none can end before it.
        _workers_cli(env, "start", *queues)
        long_1 = submit_gated("e1")
        behind = submit_behind() + submit_behind()
        acked += long_1 + behind
        _wait_started(conn, [f"e1-{q}" for q in queues])
        seen_before = _stops_seen(home, names)
        started = time.monotonic()
        stop = subprocess.Popen(
            [sys.executable, "-m", "app.cli.workers", "stop", *queues, "--timeout", "120"],
            cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + REGISTER_TIMEOUT
            while any(a <= b for a, b in zip(_stops_seen(home, names), seen_before, strict=True)):
                if stop.poll() is not None or time.monotonic() > deadline:
                    raise DrillError(f"the workers never logged the stop: {stop.poll()=}")
                time.sleep(POLL)
            at_stop = statuses(conn, long_1 + behind)
            for q in queues:
                open_gate(conn, f"e1-{q}")
            out_1 = stop.communicate(timeout=150)[0]
        finally:
            if stop.poll() is None:
                stop.kill()
                stop.wait()
        stop_1 = time.monotonic() - started
        if stop.returncode != 0:
            raise DrillError(f"workers stop exited {stop.returncode}:\n{out_1}")
        held = sum(1 for j in long_1 if at_stop[j] == "started")
        after_1 = statuses(conn, long_1 + behind)
        finished_in_stop = sum(1 for j in long_1 if after_1[j] == "finished")
        behind_waiting = sum(1 for j in behind if after_1[j] == "queued" and at_stop[j] == "queued")
        # 2. no time: the worker is killed after --timeout and its job goes back to the front of its queue; the gate
        # stays shut, so the job is certainly running when the timeout runs out
        _workers_cli(env, "start", *queues)
        _wait_status(conn, behind, "finished")
        long_2 = submit_gated("e2")
        acked += long_2
        _wait_started(conn, [f"e2-{q}" for q in queues])
        stop_2, out_2 = _workers_cli(env, "stop", *queues, "--timeout", "1")
        after_2 = statuses(conn, long_2)
        requeued = sum(1 for j in long_2 if after_2[j] == "queued")
        for q in queues:
            open_gate(conn, f"e2-{q}")  # for the rerun: the killed run never took the go
        restarted = time.time()
        _workers_cli(env, "start", *queues)
        wait_ended(conn, acked, timeout=SETTLE_TIMEOUT)
        rerun = time.time() - restarted
        wait_history(conn)
    finally:
        _workers_cli(env, "stop", "--timeout", "5")
    report.figures.update({"jobs submitted": len(acked), "acknowledged": len(acked)})
    report.figures.update(
        {
            "long jobs still running when every worker had seen the stop": f"{held} / {len(long_1)}",
            "long jobs finished during a stop with time to spare": f"{finished_in_stop} / {len(long_1)}",
            "jobs waiting behind them left queued": f"{behind_waiting} / {len(behind)}",
            "long runs of the first phase": f"{sum(conn.llen(started_key(f'e1-{q}')) for q in queues)}",
            "that stop took": f"{stop_1:.1f} s",
            "long jobs requeued by a stop --timeout 1": f"{requeued} / {len(long_2)}",
            "that stop took ": f"{stop_2:.1f} s",
            "restart to every requeued job finished": f"{rerun:.1f} s",
        }
    )
    runs = job_counts(report, conn, database_url, acked, "harvest")
    del report.figures["abandoned runs in history / in the queue's counter"]  # one queue's counter: misleading here
    killed_rows = sum(1 for j in long_2 for _, s, _ in runs.get(j, ()) if s == "abandoned")
    abandoned = sum(int(conn.hget(queue_keys(q).stats, "abandoned") or 0) for q in queues)
    report.figures["killed runs: history rows / queue counters"] = f"{killed_rows} / {abandoned}"
    for which, output in (("first", out_1), ("second", out_2)):
        said = Counter(line.split(": ", 1)[1].split(" ", 1)[0] for line in output.splitlines() if "-1: " in line)
        report.notes.append(f"{which} stop said: " + ", ".join(f"{n} {word}" for word, n in sorted(said.items())))
    if killed_rows < abandoned:
        report.notes.append(
            "FINDING: a run killed by `workers stop --timeout` gets an 'abandoned' row under the attempt number its "
            "rerun then uses (the requeue does not consume an attempt), so the rerun's 'completed' row overwrites it: "
            "the killed run vanishes from job_runs (app/runtime/lua/recover-17.lua with consume_attempt=0)"
        )
    report.promise(held == len(long_1), "a long job was not running when the stop came (the drill proves nothing)")
    report.promise(finished_in_stop == len(long_1), "a long job did not finish during a stop with time to spare")
    report.promise(behind_waiting == len(behind), "a job started after its worker was asked to stop")
    report.promise(requeued == len(long_2), "a killed worker's job was not requeued")
    return report


#: seconds two fresh scheduler processes get to fire a first slot (start-up, migrations, lease) on a busy machine
FIRST_SLOT_TIMEOUT = 120
SCHEDULES = {  # id -> 6-field cron (seconds first)
    "drill-every-second": "* * * * * *",
    "drill-every-3-seconds": "*/3 * * * * *",
}


def _leader_pid(conn: Redis) -> int | None:
    """Pid of the active scheduler, read from its lease (identity `<host>.<pid>.<random>`)."""
    identity = conn.get("bullrq:scheduler:leader")
    if identity is None:
        return None
    try:
        return int(identity.decode().rsplit(".", 2)[1])
    except (IndexError, ValueError):
        return None


def fired_slots(conn: Redis) -> list[tuple[str, float, float]]:
    """(schedule id, slot, enqueued at) of every job a scheduler fired, read from the job hashes."""
    out = []
    for key in conn.scan_iter(match=JOB_KEY_PREFIX + "*", count=1000):
        schedule, slot, created = conn.hmget(key, "schedule_id", "schedule_slot", "created_at")
        if schedule and slot:
            out.append((schedule.decode(), _rq_epoch(slot), _rq_epoch(created)))
    return out


def _rq_epoch(value: bytes) -> float:
    return datetime.strptime(value.decode(), RQ_TIME).replace(tzinfo=UTC).timestamp()


def drill_d(servers: Servers, sizes: Sizes, logs: Path) -> Report:
    """SIGKILL the active scheduler again and again: a standby takes over and fires every slot exactly once."""
    queue = "harvest"
    report = Report(
        "d",
        f"SIGKILL the active scheduler every {sizes.scheduler_every:g} s ({sizes.scheduler_kills} "
        f"kills), 2 scheduler processes, entries {', '.join(SCHEDULES.values())}",
    )
    redis, database_url, conn = servers.stage("d")
    schedules = servers.root / "drill-schedules.yaml"
    lines = ["schedules:"]
    for entry_id, cron in SCHEDULES.items():
        lines += [
            f"  - id: {entry_id}",
            f"    task: {TASK}",
            f"    queue: {queue}",
            f'    cron: "{cron}"',
            "    timezone: UTC",
        ]
    schedules.write_text("\n".join(lines) + "\n")
    env = child_env(servers.root, redis.url, database_url, BULLRQ_SCHEDULES=str(schedules))
    kills: list[float] = []
    with Fleet(env, logs) as fleet:
        started_workers(fleet, conn, queue, 1, "d")  # runs the fired jobs, so no slot waits on a running one
        count = 0

        def new_scheduler() -> None:
            nonlocal count
            count += 1
            fleet.scheduler(f"scheduler-{count}")

        new_scheduler()
        new_scheduler()
        deadline = time.monotonic() + FIRST_SLOT_TIMEOUT
        while not fired_slots(conn):
            fleet.check_alive()
            if time.monotonic() > deadline:
                raise DrillError(f"no scheduler fired a slot in {FIRST_SLOT_TIMEOUT} s")
            time.sleep(0.2)
        began = time.time()
        for _ in range(sizes.scheduler_kills):
            time.sleep(sizes.scheduler_every)
            pid = _leader_pid(conn)
            victim = next((n for n, p in fleet.procs.items() if p.pid == pid and p.poll() is None), None)
            if victim is None:
                raise DrillError(f"the active scheduler (pid {pid}) is not one of this drill's processes")
            fleet.kill(victim)
            kills.append(time.time())
            new_scheduler()  # two stay up: the standby takes over, the new one stands by
            takeover = time.monotonic() + 2 * (LEADER_TTL + RENEW) + 10
            while _leader_pid(conn) in (None, pid):  # the next kill must hit the new leader, not a gap
                if time.monotonic() > takeover:
                    raise DrillError("no standby scheduler took over after a kill")
                time.sleep(POLL)
        time.sleep(sizes.scheduler_every + 2)  # a few slots in a calm state after the last takeover
        calm = time.time()
        deadline = time.monotonic() + FIRST_SLOT_TIMEOUT
        while max(slot for _, slot, _ in fired_slots(conn)) < calm - 1:  # firing goes on, however slow the machine
            if time.monotonic() > deadline:
                break
            time.sleep(POLL)
        ended = time.time()
        for name, proc in fleet.procs.items():
            if name.startswith("scheduler") and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=20)
        time.sleep(1)  # the worker runs the last fired jobs
        wait_history(conn)

    fired = fired_slots(conn)
    with psycopg.connect(database_url) as db:
        skipped = [
            (schedule, started.timestamp(), reason)
            for schedule, started, reason in db.execute(
                "SELECT schedule_id, started_at, error_message FROM job_runs WHERE status = 'skipped'"
            )
        ]
    per_slot = Counter((schedule, round(slot, 3)) for schedule, slot, _ in fired)
    skipped_slots = {(schedule, round(slot, 3)) for schedule, slot, _ in skipped}
    expected = set()
    for entry_id, cron_text in SCHEDULES.items():
        slots = [s for e, s, _ in fired if e == entry_id]
        cron, moment = Cron(cron_text), datetime.fromtimestamp(min(slots), UTC)
        while moment.timestamp() <= max(slots):
            expected.add((entry_id, round(moment.timestamp(), 3)))
            moment = cron.next_after(moment)
    missed = expected - set(per_slot) - skipped_slots
    doubled = sum(1 for n in per_slot.values() if n > 1)
    gaps = []
    for kill in kills:
        after = [created for _, _, created in fired if created > kill]
        if after:
            gaps.append(min(after) - kill)
    late = [created - slot for _, slot, created in fired]
    report.figures.update(
        {
            "scheduler processes started": count,
            "active scheduler SIGKILLed": len(kills),
            "slots due while the drill ran": len(expected),
            "slots fired": len(per_slot),
            "slots fired exactly once": sum(1 for n in per_slot.values() if n == 1),
            "slots fired more than once": doubled,
            "slots skipped (the previous run still going)": len(skipped_slots & expected),
            "slots missed": len(missed),
            "kill to next fired slot, max": f"{max(gaps):.1f} s" if gaps else "-",
            "slot to enqueue, max (catching up after a kill)": f"{max(late):.1f} s" if late else "-",
            "drill length": f"{ended - began:.0f} s",
        }
    )
    if missed:
        report.notes.append("missed slots: " + ", ".join(f"{e} {_clock(s)}" for e, s in sorted(missed)[:10]))
    for schedule, slot, reason in skipped[:5]:
        report.notes.append(f"skipped: {schedule} {_clock(slot)}: {reason}")
    report.promise(not missed, f"{len(missed)} slot(s) missed")
    report.promise(doubled == 0, f"{doubled} slot(s) fired more than once")
    report.promise(len(gaps) == len(kills), "no slot fired after some kill: the standby never took over")
    last = max(slot for _, slot, _ in fired)
    report.promise(last >= calm - 1, f"slots stopped firing after the last takeover (none due after it fired in "
                                     f"{FIRST_SLOT_TIMEOUT} s)")
    return report


def drill_b(servers: Servers, sizes: Sizes, logs: Path) -> Report:
    """Restart Redis (append-only file on) under load: every job Redis acknowledged still runs to the end."""
    queue = "harvest"
    report = Report(
        "b",
        f"restart Redis with AOF on, {sizes.restarts} time(s) (SIGKILL, then SIGTERM, in turn), "
        f"while jobs are submitted and run; {sizes.workers} worker processes on {queue}",
    )
    redis, database_url, conn = servers.stage("b", persistent=True)
    seconds = sizes.restarts * (sizes.load_seconds + 2)
    total = int(seconds * 100)  # about 100 submissions a second
    recoveries, downs = [], []
    with Fleet(child_env(servers.root, redis.url, database_url), logs) as fleet:
        started_workers(fleet, conn, queue, sizes.workers, "b")
        submitter = Submitter(redis.url, queue, total, seconds, sizes.job_sleep)
        submitter.start()
        for n in range(sizes.restarts):
            time.sleep(sizes.load_seconds / 2)
            how = "SIGKILL" if n % 2 == 0 else "SIGTERM"
            pid = int(redis.pid_file.read_text())
            os.kill(pid, signal.SIGKILL if how == "SIGKILL" else signal.SIGTERM)
            while redis.is_running():
                time.sleep(0.01)
            down = time.monotonic()
            time.sleep(1.0)
            redis.start()
            downs.append(f"{how}, down {time.monotonic() - down:.1f} s")
            up = time.monotonic()
            before = completed_count(conn, queue)
            while completed_count(conn, queue) <= before:  # jobs flow again
                fleet.check_alive()
                if time.monotonic() - up > SETTLE_TIMEOUT:
                    raise DrillError("no job completed after Redis came back")
                time.sleep(POLL)
            recoveries.append(time.monotonic() - up)
            time.sleep(sizes.load_seconds / 2)
        submitter.finish()
        wait_ended(conn, submitter.acked, fleet=fleet)
        pending = conn.xpending(HISTORY_STREAM, GROUP)["pending"]
        lag = wait_history(conn)
        fleet.check_alive()
    report.figures.update(
        {
            "jobs submitted": total,
            "acknowledged": len(submitter.acked),
            "not acknowledged (Redis down or restarting)": len(submitter.unacked),
        }
    )
    job_counts(report, conn, database_url, submitter.acked, queue)
    present = statuses(conn, submitter.unacked)
    report.figures["not acknowledged, yet in Redis and run"] = sum(1 for s in present.values() if s == "finished")
    report.figures["Redis back to jobs completing again, max"] = f"{max(recoveries):.1f} s"
    report.figures["history rows read but not yet written at the last job"] = pending
    report.figures["last job to every history row in PostgreSQL"] = f"{lag:.1f} s"
    if lag > CLAIM_AFTER / 2:
        report.notes.append(
            f"history rows were late by about CLAIM_AFTER ({CLAIM_AFTER} s): a writer's XREADGROUP ran in Redis but "
            "its reply was lost to the restart, so those rows sat in the group's pending list under a live consumer "
            "until XAUTOCLAIM took them (app/store/history.py HistoryWriter: `_unsure` is set only once a read "
            "returns, so after a Redis error the writer does not re-read its own pending rows)"
        )
    report.notes.append("restarts: " + "; ".join(downs))
    return report


# -- running and printing ------------------------------------------------------------------------------------------

DRILLS: dict[str, Callable[[Servers, Sizes, Path], Report]] = {
    "a": drill_a, "b": drill_b, "c": drill_c, "d": drill_d, "e": drill_e, "f": drill_f, "g": drill_g, "h": drill_h,
    "i": drill_i, "j": drill_j, "k": drill_k,
}  # fmt: skip


def print_report(report: Report) -> None:
    print(f"drill {report.drill}: {report.title}")
    width = max(len(label) for label in report.figures) + 2
    for label, value in report.figures.items():
        shown = f"{value:,}" if isinstance(value, int) else str(value)
        print(f"  {label.strip():<{width}} {shown:>12}")
    for note in report.notes:
        print(f"  note: {note}")
    if report.ok:
        print("  PROMISE KEPT")
    for broken in report.broken:
        print(f"  PROMISE BROKEN: {broken}")
    print(flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.drills", description=__doc__.split("\n")[0])
    parser.add_argument(
        "drills",
        nargs="*",
        choices=[[], *DRILLS],
        metavar="DRILL",
        help="drills to run, in order (a b c d e f g h i j k; default: all)",
    )
    parser.add_argument("--quick", action="store_true", help="small, bounded drills (the test suite's form)")
    parser.add_argument("--jobs", type=int, help="jobs of drill a")
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the servers' directory and the process logs")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else Sizes()
    if args.jobs is not None:
        if args.jobs < 1:
            parser.error("--jobs must be at least 1")
        sizes = Sizes(**{**asdict(sizes), "jobs": args.jobs})
    chosen = list(dict.fromkeys(args.drills)) or list(DRILLS)

    root = Path(tempfile.mkdtemp(prefix="bullrq-drills-"))
    root.chmod(0o755)  # as root, PostgreSQL runs as an unprivileged user that must reach its directory
    logs = root / "logs"
    logs.mkdir()
    servers = Servers(root)
    reports: list[Report] = []
    status = 0
    try:
        servers.start()
        for name in chosen:
            started = time.monotonic()
            try:
                report = DRILLS[name](servers, sizes, logs)
            except (DrillError, RedisError, psycopg.Error, ServerError, subprocess.TimeoutExpired) as exc:
                report = Report(name, DRILLS[name].__doc__.split("\n")[0], broken=[f"the drill could not run: {exc}"])
            report.figures["drill took"] = f"{time.monotonic() - started:.0f} s"
            reports.append(report)
            if not args.json:
                print_report(report)
            status = status or (0 if report.ok else 1)
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        servers.close()
        if args.keep:
            print(f"servers and logs kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps([{**asdict(r), "ok": r.ok} for r in reports], indent=2, default=str))
    elif len(reports) > 1:
        kept = " ".join(r.drill for r in reports if r.ok) or "none"
        broken = " ".join(r.drill for r in reports if not r.ok) or "none"
        print(f"drills whose promises were kept: {kept}; broken: {broken}")
    return status


if __name__ == "__main__":
    sys.exit(main())
