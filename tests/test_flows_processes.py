"""Flows with real worker processes: dependents under load never start before their parents end, each
`onParentFailure` mode (a parent failing for good, and a parent lost with its SIGKILLed worker), and a batch's
callbacks released exactly once with a worker SIGKILLed around the batch's last job or during a callback."""

from __future__ import annotations

import random

import pytest

from app.runtime.enqueue import enqueue
from app.runtime.flows import batch_status, create_batch
from app.runtime.jobs import describe_job, fetch_job
from app.runtime.leases import LEASE
from app.tasks import queue_keys
from queues import batch_key, job_key
from tests.fixtures import wait_for
from tests.handlers import open_gate, runs
from tests.waits import status, wait_status

pytestmark = pytest.mark.slow
pytest_plugins = ["tests.worker_processes"]  # the `workers` fixture

Q = {"queue": "harvest"}
KEYS = queue_keys("harvest")
#: seconds a job whose worker was SIGKILLed may take to end: its lease runs out, then a worker's recovery looks
AFTER_KILL = LEASE + 40


def _worker_running(redis_conn, job_id: str) -> str:
    """The `--name` of the worker process running `job_id`."""
    worker = wait_for(lambda: status(redis_conn, job_id) == "started" and redis_conn.hget(job_key(job_id),
                                                                                          "worker_name"))
    return worker.decode().split(".", 1)[0]


def _edges_out_of_order(redis_conn, edges: list[tuple[str, str]]) -> list[tuple[str, str, float, float]]:
    """(parent, child, parent's end, child's start) for every child that started before its parent ended."""
    starts = {e["tag"]: e["t"] for e in runs(redis_conn)}
    ends = {e["tag"]: e["t"] for e in runs(redis_conn, event="end")}
    return [(p, c, ends.get(p, float("inf")), starts.get(c, float("-inf"))) for p, c in edges
            if not starts.get(c, float("-inf")) >= ends.get(p, float("inf"))]  # fmt: skip


def test_dependents_never_start_before_their_parents_end_under_load(redis_conn, workers):
    rng = random.Random(5)
    edges: list[tuple[str, str]] = []
    ids: dict[str, str] = {}

    def job(tag: str, parents: list[str] = ()) -> None:
        options = {**Q, "dependsOn": [ids[p] for p in parents]} if parents else Q
        ids[tag] = enqueue(redis_conn, "semantics.record", {"tag": tag, "sleep": rng.choice([0, 0.01, 0.05])},
                           options).id  # fmt: skip
        edges.extend((p, tag) for p in parents)

    # 24 chains of 5, created before any worker runs (every child waits deferred), and a join per 4 chains
    for c in range(24):
        for n in range(5):
            job(f"c{c}-{n}", [f"c{c}-{n - 1}"] if n else [])
    for g in range(6):
        job(f"join{g}", [f"c{c}-4" for c in range(4 * g, 4 * g + 4)])
    assert redis_conn.zcard(KEYS.deferred) == 24 * 4 + 6
    # one job created once some of its parents already ran is released the same way
    for name in ("h-1", "h-2", "h-3", "h-4"):
        workers.start("harvest", name=name)
    job("late", ["join0", "join5", "c3-2"])

    for job_id in ids.values():
        wait_status(redis_conn, job_id, "finished", timeout=60)
    assert _edges_out_of_order(redis_conn, edges) == []
    started = [e["tag"] for e in runs(redis_conn)]
    assert sorted(started) == sorted(ids)  # each job ran once
    assert len({e["pid"] for e in runs(redis_conn)}) > 1  # the load was spread over several processes
    assert redis_conn.zcard(KEYS.deferred) == 0


def _children_of(redis_conn, parent: str) -> dict[str, tuple[str, str]]:
    """For each mode, a child of `parent` and a grandchild (default mode) of that child: mode -> (child, grandchild)."""
    made = {}
    for mode in ("fail", "cancel", "ignore"):
        child = enqueue(redis_conn, "semantics.record", {"tag": f"{mode}-child"},
                        {**Q, "dependsOn": [parent], "onParentFailure": mode}).id  # fmt: skip
        grandchild = enqueue(redis_conn, "semantics.record", {"tag": f"{mode}-grandchild"},
                             {**Q, "dependsOn": [child]}).id  # fmt: skip
        made[mode] = (child, grandchild)
    return made


def _assert_modes_applied(redis_conn, parent: str, made: dict[str, tuple[str, str]]) -> None:
    for (child, grandchild), expected in zip(
        made.values(), [("failed", "failed"), ("canceled", "failed"), ("finished", "finished")], strict=True
    ):
        assert wait_status(redis_conn, child, expected[0]) == expected[0]
        assert wait_status(redis_conn, grandchild, expected[1]) == expected[1]
    ran = sorted(e["tag"] for e in runs(redis_conn) if "child" in e["tag"])
    assert ran == ["ignore-child", "ignore-grandchild"]  # the others ended without running
    fail_child, fail_grandchild = made["fail"]
    assert describe_job(fetch_job(fail_child, redis_conn))["error"] == f"parent {parent} failed"
    assert describe_job(fetch_job(fail_grandchild, redis_conn))["error"] == f"parent {fail_child} failed"
    cancel_child, cancel_grandchild = made["cancel"]
    assert redis_conn.zscore(KEYS.canceled, cancel_child) is not None
    assert describe_job(fetch_job(cancel_grandchild, redis_conn))["error"] == f"parent {cancel_child} canceled"
    ignore_child, _ = made["ignore"]
    assert _edges_out_of_order(redis_conn, [("ignore-child", "ignore-grandchild")]) == []
    assert fetch_job(ignore_child, redis_conn).return_value() == "ignore-child"
    assert redis_conn.zcard(KEYS.deferred) == 0


def test_each_on_parent_failure_mode_once_the_parent_has_failed_its_last_attempt(redis_conn, workers):
    workers.start("harvest", name="h-1")
    workers.start("harvest", name="h-2")
    parent = enqueue(redis_conn, "semantics.fail", {"tag": "parent"},
                     {**Q, "attempts": 2, "backoff": {"type": "fixed", "delay": 2}}).id  # fmt: skip
    made = _children_of(redis_conn, parent)
    wait_status(redis_conn, parent, "scheduled")  # failed once, a retry due: not yet failed for good
    assert {status(redis_conn, job) for pair in made.values() for job in pair} == {"deferred"}
    wait_status(redis_conn, parent, "failed", timeout=30)
    assert len(runs(redis_conn, "parent")) == 2
    _assert_modes_applied(redis_conn, parent, made)


def test_each_on_parent_failure_mode_when_the_parent_is_lost_with_its_sigkilled_worker(redis_conn, workers):
    workers.start("harvest", name="h-1")
    parent = enqueue(redis_conn, "semantics.gated", {"tag": "parent", "wait": 120}, {**Q, "attempts": 1}).id
    made = _children_of(redis_conn, parent)
    wait_for(lambda: runs(redis_conn, "parent"))
    workers.kill(_worker_running(redis_conn, parent))
    workers.start("harvest", name="h-2")  # its recovery takes the lease back once it has run out: no attempt left
    wait_status(redis_conn, parent, "failed", timeout=AFTER_KILL)
    _assert_modes_applied(redis_conn, parent, made)


def _batch(redis_conn, last: tuple[str, dict], on_complete: tuple[str, dict] | None = None):
    jobs = [("semantics.record", {"tag": f"j{n}"}, Q) for n in range(5)] + [(*last, Q)]
    complete = on_complete or ("semantics.batch-done", {"tag": "onComplete"})
    return create_batch(redis_conn, jobs, on_success=("semantics.batch-done", {"tag": "onSuccess"}, Q),
                        on_complete=(*complete, Q))  # fmt: skip


def _released_once(redis_conn, job_id: str) -> None:
    """The callback ended finished and is nowhere waiting to run again."""
    assert status(redis_conn, job_id) == "finished"
    assert all(redis_conn.lpos(lane, job_id) is None for lane in KEYS.lanes)
    assert redis_conn.zscore(KEYS.deferred, job_id) is None and redis_conn.zscore(KEYS.scheduled, job_id) is None


@pytest.mark.parametrize("when", ["mid-run", "as-it-ends"])
def test_batch_callbacks_fire_exactly_once_with_the_last_jobs_worker_sigkilled(redis_conn, workers, when):
    workers.start("harvest", name="h-1")
    workers.start("harvest", name="h-2")
    batch = _batch(redis_conn, ("semantics.gated", {"tag": "last", "wait": 120}))
    wait_for(lambda: runs(redis_conn, "last") and batch_status(redis_conn, batch.id)["pending"] == 1, timeout=30)
    victim = _worker_running(redis_conn, batch.job_ids[-1])
    if when == "mid-run":
        workers.kill(victim)
        open_gate(redis_conn, "last")  # for the retry
    else:
        open_gate(redis_conn, "last")
        wait_for(lambda: not redis_conn.llen("test:gate:last"), interval=0.002)  # taken: the run is ending
        workers.kill(victim)
        if status(redis_conn, batch.job_ids[-1]) != "finished":  # killed before its end was recorded
            open_gate(redis_conn, "last")
    workers.start("harvest", name="h-3")

    for callback in batch.callbacks.values():
        wait_status(redis_conn, callback, "finished", timeout=AFTER_KILL)
    shown = batch_status(redis_conn, batch.id)
    assert (shown["state"], shown["completed"], shown["pending"]) == ("completed", 6, 0), shown
    ended = {e["tag"]: e["t"] for e in runs(redis_conn, event="end")}
    for name, callback in batch.callbacks.items():
        assert len(runs(redis_conn, name)) == 1, name
        _released_once(redis_conn, callback)
        assert runs(redis_conn, name)[0]["t"] >= max(ended.values())  # after every job of the batch ended
    if when == "mid-run":
        assert len(runs(redis_conn, "last")) == 2  # killed, then retried once
    assert sorted(e["tag"] for e in runs(redis_conn) if e["tag"].startswith("j")) == [f"j{n}" for n in range(5)]


def test_a_callback_whose_worker_is_sigkilled_mid_run_runs_again_yet_is_released_once(redis_conn, workers):
    workers.start("harvest", name="h-1")
    workers.start("harvest", name="h-2")
    batch = _batch(redis_conn, ("semantics.record", {"tag": "last"}),
                   on_complete=("semantics.gated", {"tag": "onComplete", "wait": 120}))  # fmt: skip
    callback = batch.callbacks["onComplete"]
    wait_for(lambda: runs(redis_conn, "onComplete"), timeout=30)
    workers.kill(_worker_running(redis_conn, callback))
    open_gate(redis_conn, "onComplete")  # for its rerun
    workers.start("harvest", name="h-3")

    wait_status(redis_conn, callback, "finished", timeout=AFTER_KILL)
    assert len(runs(redis_conn, "onComplete")) == 2  # at-least-once: the killed run, then its rerun
    assert len(runs(redis_conn, "onComplete", event="end")) == 1  # one run went to its end: one release
    assert fetch_job(callback, redis_conn).attempt == 2  # the rerun is the retry of the killed run
    _released_once(redis_conn, callback)
    wait_status(redis_conn, batch.callbacks["onSuccess"], "finished")
    assert len(runs(redis_conn, "onSuccess")) == 1
    assert redis_conn.hget(batch_key(batch.id), "state") == b"completed"
