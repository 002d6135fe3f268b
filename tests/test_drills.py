"""The fault drills in their quick form (bench.drills --quick): counts only, never timings.

Each drill starts its own throwaway redis-server and PostgreSQL, real worker and scheduler processes, does its
damage and reads back from Redis and `job_runs` what every job went through. The drills mostly wait (leases, claim
timers, takeovers, outages), so three groups run side by side to keep the file near three minutes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from bench.drill_flows import QUICK_FLOWS
from bench.drills import QUICK
from tests.fixtures import processes_with

#: the first test waits for every drill (the module's fixture): more than pytest's default limit of 300 s
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PROJECT = Path(__file__).resolve().parent.parent
#: drills run by each of the processes started side by side
GROUPS = (["a", "b", "f"], ["c", "e", "d", "k"], ["g", "h", "i", "j"])


#: seconds the groups may take together before their processes are killed
TIMEOUT = 840


def _kill_marked(marker: str) -> list[int]:
    """SIGKILL every process whose environment carries `marker` (a drill, its servers, workers and schedulers, the
    daemons the `workers` CLI started included); returns their pids."""
    killed = []
    for pid in processes_with("", env=marker):
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            pass
    return killed


@pytest.fixture(scope="module")
def reports() -> dict[str, dict]:
    """Every drill's report, by letter. On a timeout every process the drills started is killed, not left behind."""
    marker = f"BULLRQ_DRILL_RUN={uuid.uuid4().hex}"
    key, value = marker.split("=", 1)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.drills", *group, "--quick", "--json"],
            cwd=PROJECT,
            env={**os.environ, key: value},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for group in GROUPS
    ]
    found = {}
    deadline = time.monotonic() + TIMEOUT
    try:
        for proc in procs:
            try:
                out, err = proc.communicate(timeout=max(1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                for other in procs:
                    if other.poll() is None:
                        other.send_signal(signal.SIGINT)  # its `finally` stops its servers and processes
                _wait_until(lambda: all(p.poll() is not None for p in procs), 30)
                raise
            assert out.strip(), f"bench.drills printed nothing (exit {proc.returncode}):\n{err[-3000:]}"
            for report in json.loads(out):
                found[report["drill"]] = report
    finally:
        _wait_until(lambda: not processes_with("", env=marker), 20)  # servers still shutting down
        left = _kill_marked(marker)  # whatever outlived its drill, after a timeout or not
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
    assert not left, f"the drills left processes running: {left}"
    return found


def _wait_until(condition, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.2)


def _assert_every_job_completed_once(report: dict) -> dict:
    figures = report["figures"]
    broken = report["broken"]
    report = json.dumps(report, indent=1, default=str)  # whole, where pytest would shorten a dict
    assert not [b for b in broken if "could not run" in b], report
    acked = figures["acknowledged"]
    assert acked > 0
    assert figures["lost (acknowledged, never ended)"] == 0, report
    assert figures["finished (Redis)"] == acked, report
    assert figures["failed (Redis)"] == 0, report
    assert figures["completed exactly once"] == acked, report
    assert figures["completed more than once"] == 0, report
    assert figures["finished without a completed history row"] == 0, report
    return figures


def test_a_sigkilled_workers_lose_no_job_and_their_runs_are_counted(reports):
    report = reports["a"]
    figures = _assert_every_job_completed_once(report)
    assert figures["jobs submitted (and one held at a gate)"] == f"{QUICK.jobs} + 1"
    assert figures["acknowledged"] == QUICK.jobs + 1
    assert figures["workers SIGKILLed"] == QUICK.kills
    assert figures["runs of the held job (killed, then retried)"] == 2  # a kill did hit a running job
    in_history, in_counter = map(int, figures["abandoned runs in history / in the queue's counter"].split(" / "))
    assert in_history >= 1  # at least the held job's killed run
    assert in_history == in_counter  # every run lost to a kill is in the history, once
    assert figures["run more than once (an abandoned run, then a retry)"] == in_history
    assert report["ok"] and report["broken"] == []


def test_b_a_redis_restart_loses_no_acknowledged_job(reports):
    report = reports["b"]
    figures = _assert_every_job_completed_once(report)
    assert figures["acknowledged"] + figures["not acknowledged (Redis down or restarting)"] == figures["jobs submitted"]
    assert figures["not acknowledged (Redis down or restarting)"] > 0  # the restart did happen under load
    assert report["ok"] and report["broken"] == []


def test_c_jobs_run_through_a_postgres_outage_and_every_history_row_arrives(reports):
    report = reports["c"]
    figures = _assert_every_job_completed_once(report)
    assert figures["jobs completed while PostgreSQL was down"] > 0
    assert figures["history rows waiting in Redis when it came back"] > 0
    assert figures["jobs without a history row"] == 0
    assert figures["history rows in PostgreSQL / jobs"] == f"{figures['acknowledged']} / {figures['acknowledged']}"
    assert report["ok"] and report["broken"] == []


def test_d_killing_the_active_scheduler_misses_and_doubles_no_slot(reports):
    report = reports["d"]
    figures = report["figures"]
    assert not [b for b in report["broken"] if "could not run" in b], report
    assert figures["active scheduler SIGKILLed"] == QUICK.scheduler_kills
    assert figures["slots due while the drill ran"] >= 10, report  # 8 s of sleeps at least: 8 + 2 slots
    assert figures["slots missed"] == 0, report
    assert figures["slots fired more than once"] == 0, report
    assert (
        figures["slots fired exactly once"] + figures["slots skipped (the previous run still going)"]
        == (figures["slots due while the drill ran"])
    )
    assert report["ok"] and report["broken"] == []


def test_e_workers_stop_lets_long_jobs_finish_or_requeues_them(reports):
    report = reports["e"]
    figures = _assert_every_job_completed_once(report)
    n = len(QUICK.stop_queues)
    # the precondition: the stop came while every long job ran
    assert figures["long jobs still running when every worker had seen the stop"] == f"{n} / {n}", report
    assert figures["long jobs finished during a stop with time to spare"] == f"{n} / {n}", report
    assert figures["long runs of the first phase"] == str(n), report
    assert figures["jobs waiting behind them left queued"] == f"{2 * n} / {2 * n}", report
    assert figures["long jobs requeued by a stop --timeout 1"] == f"{n} / {n}", report
    assert report["ok"] and report["broken"] == []


def test_e_a_run_killed_by_workers_stop_keeps_its_history_row(reports):
    figure = reports["e"]["figures"]["killed runs: history rows / queue counters"]
    in_history, in_counters = map(int, figure.split(" / "))
    assert in_counters == len(QUICK.stop_queues)
    assert in_history == in_counters


def test_f_a_sentinel_failover_loses_no_confirmed_job_and_everything_follows_the_new_master(reports):
    report = reports["f"]
    figures = report["figures"]
    assert not [b for b in report["broken"] if "could not run" in b], report
    confirmed = figures["acknowledged and confirmed by a replica (WAIT)"]
    assert confirmed > 50
    assert figures["confirmed after the last kill (by the rejoined node)"] > 0  # enqueue and replication resumed
    assert figures["lost (acknowledged, never ended)"] == 0, report  # of the confirmed ones
    assert figures["finished (Redis)"] == confirmed, report
    assert figures["failed (Redis)"] == 0, report
    # not asserted: jobs the master alone acknowledged may go with it, and history rows still in its stream too
    assert figures["not acknowledged (no master for a moment)"] > 0  # the kill did land under load
    assert figures["workers that ran jobs after the last failover"] == f"{QUICK.workers} / {QUICK.workers}"
    assert len([n for n in report["notes"] if n.startswith("kill ")]) == QUICK.failovers
    assert report["ok"] and report["broken"] == []


def test_g_redis_down_past_the_lease_loses_no_job_reruns_none_and_fails_none(reports):
    report = reports["g"]
    figures = _assert_every_job_completed_once(report)
    assert figures["not acknowledged (Redis down)"] > 0  # the outage did land under load
    assert figures["runs taken for abandoned"] == 0
    assert figures["runs in flight: finished (not rerun, not failed)"] == f"{QUICK.workers} / {QUICK.workers}"
    assert report["ok"] and report["broken"] == []


def test_h_after_flushall_workers_are_seen_again_schedules_fire_and_no_row_stays_started(reports):
    report = reports["h"]
    figures = _assert_every_job_completed_once(report)
    assert figures["workers counted by the stats after it"] == f"{QUICK.workers} / {QUICK.workers}"
    assert figures["slots fired by jobs created after the flush"] > 0
    assert figures["slots fired more than once"] == 0  # missed slots: lateness on a loaded machine, not asserted
    assert figures["history rows left `started`"] == 0
    assert report["ok"] and report["broken"] == []


def test_i_a_worker_restarted_under_its_previous_name_serves_at_once_and_retries_its_job_once(reports):
    report = reports["i"]
    figures = _assert_every_job_completed_once(report)
    n = QUICK.container_kills
    assert figures["killed jobs retried exactly once (abandoned, then completed)"] == f"{n} / {n}"


def test_k_reading_with_rq_info_and_rq_dashboard_during_kills_changes_nothing(reports):
    report = reports["k"]
    figures = _assert_every_job_completed_once(report)
    assert figures["jobs submitted"] == figures["acknowledged"] == QUICK.k_jobs
    assert figures["plain `rq info` runs"] > 0 and figures["rq-dashboard requests"] > 0
    assert figures["readings that failed"] == 0, report
    in_history, in_counter = map(int, figures["abandoned runs in history / in the queue's counter"].split(" / "))
    assert in_history == in_counter  # only bullrq's recover took abandoned runs back, each with its history row
    assert figures["run more than once (an abandoned run, then a retry)"] == in_history
    assert report["ok"] and report["broken"] == []


def _pair(figure: str) -> tuple[int, int]:
    first, second = figure.split(" / ")
    return int(first), int(second)


def test_j_batch_callbacks_fire_exactly_once_and_chains_run_in_order_through_sigkills(reports):
    report = reports["j"]
    figures = _assert_every_job_completed_once(report)  # the jobs of the batches and chains
    flows = QUICK_FLOWS
    batches = flows.rounds * (len(flows.targets) - flows.targets.count("chain") + flows.plain_batches) + 1
    assert figures["batches not ended (stuck)"] == 0, report
    assert figures["batches in the wrong state"] == 0, report
    completed, failed = _pair(figures["batches ended completed / failed (a job failed for good)"])
    assert completed + failed == batches and failed > 0
    assert _pair(figures["callback jobs created once (Redis) / callbacks"]) == (2 * batches, 2 * batches), report
    fired, due = _pair(figures["callbacks fired exactly once / due to fire"])
    assert fired == due == batches + completed, report  # every onComplete, and the onSuccess of completed batches
    assert _pair(figures["onSuccess canceled unrun (batch failed) / due"]) == (failed, failed), report
    assert figures["callbacks never released"] == 0, report
    assert figures["callbacks released more than once"] == 0, report
    # the kills landed where they were aimed: every held job and callback was running when its worker died
    assert figures["SIGKILL: last job of a batch mid-run"] == flows.rounds * flows.targets.count("mid")
    assert figures["SIGKILL: a callback mid-run"] == flows.rounds
    assert figures["SIGKILL: a chain link mid-run"] == flows.rounds * flows.targets.count("chain")
    assert figures["callbacks run again after a kill (at-least-once)"] >= flows.rounds  # the killed ones, rerun
    edges = flows.rounds * flows.chains * flows.chain_length  # each chain's links, and its tail into the join
    assert _pair(figures["chain links (parent -> child) run in order"]) == (edges, edges), report
    done, doomed = _pair(figures["jobs failing for good, failed once"])
    assert done == doomed == failed
    assert report["ok"] and report["broken"] == []
