"""Fair groups within a queue on a real Redis: turns across groups (priorities first), per-group limits, and a
grouped job's way through cancel, delete, retries, recovery, stats and listings."""

from __future__ import annotations

import json

import pytest

from app.errors import InvalidJobError
from app.runtime.control import cancel, delete, empty
from app.runtime.enqueue import enqueue, enqueue_many
from app.runtime.groups import group_stats
from app.runtime.job_list import list_jobs
from app.runtime.jobs import State, describe_job, fetch_job
from app.runtime.leases import recover
from app.runtime.stats import queue_stats
from app.runtime.worker import build_worker
from app.tasks import queue_keys
from tests.fixtures import wait_for
from tests.handlers import runs
from tests.waits import status

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.worker_processes"]  # the `workers` fixture

Q = "harvest"
KEYS = queue_keys(Q)


def _add(redis_conn, tag: str, group: str | None = None, **options) -> str:
    return enqueue(redis_conn, "semantics.record", {"tag": tag}, {"queue": Q, "group": group, **options}).id


def _order(redis_conn) -> list[str]:
    build_worker([Q], redis_conn, "groups-test").work(burst=True)
    return [entry["tag"] for entry in runs(redis_conn)]


def test_a_group_with_a_backlog_does_not_hold_another_group_back(redis_conn):
    enqueue_many(redis_conn, [("semantics.record", {"tag": f"big{n}"}, {"queue": Q, "group": "big"})
                              for n in range(10_000)])  # fmt: skip
    _add(redis_conn, "small", "small")
    _add(redis_conn, "plain")  # without a group: the lane is one more turn
    assert queue_stats(redis_conn)["queues"][Q]["waiting"] == 10_002
    assert group_stats(redis_conn, Q)["groups"] == {"big": {"waiting": 10_000, "active": 0, "limit": None},
                                                    "small": {"waiting": 1, "active": 0, "limit": None}}
    order = _order(redis_conn)
    assert sorted(order[:3]) == ["big0", "plain", "small"] and len(order) == 10_002


def test_turns_rotate_and_priorities_come_first(redis_conn):
    for n in range(3):
        _add(redis_conn, f"a{n}", "a")  # any text names a group: "team α/β:5" and "a" are apart
    _add(redis_conn, "odd", "team α/β:5", priority="low")
    for n in range(2):
        _add(redis_conn, f"b{n}", "b")
    _add(redis_conn, "urgent", "b", priority="high")
    assert _order(redis_conn) == ["urgent", "a0", "b0", "a1", "b1", "a2", "odd"]


def test_a_group_at_its_limit_waits_while_others_run(redis_conn):
    for n in range(2):
        _add(redis_conn, f"a{n}", "a", groupConcurrency=1)
    _add(redis_conn, "b0", "b")
    first = build_worker([Q], redis_conn, "groups-one")
    job, _member = first._job_from_reply(first._dequeue(redis_conn))  # a0 runs (its lease held)
    assert job.kwargs["tag"] == "a0"
    assert group_stats(redis_conn, Q)["groups"]["a"] == {"waiting": 1, "active": 1, "limit": 1}
    second = build_worker([Q], redis_conn, "groups-two")
    reply = second._dequeue(redis_conn)
    assert second._job_from_reply(reply)[0].kwargs["tag"] == "b0"  # a1 passed over: group a is at its limit
    assert second._dequeue(redis_conn)[0] == 0  # only a1 waits, and group a is still at its limit


def test_grouped_jobs_are_listed_counted_canceled_deleted_and_emptied(redis_conn):
    ids = [_add(redis_conn, f"g{n}", f"g{n % 2}") for n in range(4)]
    plain = _add(redis_conn, "plain")
    listed = list_jobs(redis_conn, State.WAITING, Q)
    assert listed["total"] == 5 and {job["id"] for job in listed["jobs"]} == {*ids, plain}
    assert describe_job(fetch_job(ids[0], redis_conn))["group"] == "g0"
    assert cancel(redis_conn, ids[0]) == "canceled"
    delete(redis_conn, ids[1])
    assert queue_stats(redis_conn)["queues"][Q]["waiting"] == 3
    assert empty(redis_conn, Q) == 3
    assert status(redis_conn, ids[2]) is None and status(redis_conn, plain) is None
    assert _order(redis_conn) == []


def test_retries_recovery_and_releases_keep_a_job_in_its_group(redis_conn):
    flaky = enqueue(redis_conn, "semantics.flaky", {"tag": "flaky"}, {"queue": Q, "group": "g", "attempts": 2,
                                                                       "backoff": {"type": "fixed", "delay": 0}})
    assert _order(redis_conn) == ["flaky", "flaky"] and status(redis_conn, flaky.id) == "finished"

    parent = _add(redis_conn, "parent")
    child = _add(redis_conn, "child", "g", dependsOn=[parent])
    lost = _add(redis_conn, "lost", "g")
    worker = build_worker([Q], redis_conn, "groups-lost")
    job, member = worker._job_from_reply(worker._dequeue(redis_conn))  # group g's turn came first
    assert job.id == lost
    recover(redis_conn, Q, member=member, consume_attempt=False, reason="its worker died")  # back to its group
    assert redis_conn.lrange(KEYS.group_lane("g", 5), 0, -1) == [lost.encode()]
    assert _order(redis_conn) == ["flaky", "flaky", "parent", "lost", "child"]  # child released into group g
    assert status(redis_conn, child) == "finished" and status(redis_conn, lost) == "finished"
    assert not redis_conn.exists(*KEYS.rings)  # every turn taken: the rings are gone


def test_bad_group_options_are_refused(redis_conn):
    for options, message in [({"group": ""}, "option 'group'"), ({"group": "a\x00b"}, "option 'group'"),
                             ({"group": "x" * 201}, "option 'group'"),
                             ({"group": "g", "groupConcurrency": 0}, "groupConcurrency")]:  # fmt: skip
        with pytest.raises(InvalidJobError, match=message):
            enqueue(redis_conn, "semantics.record", {"tag": "x"}, {"queue": Q, **options})


def _most_at_once(entries: list[dict]) -> int:
    """The most runs between their start and end events at one moment."""
    events = sorted([(e["t"], 1) for e in entries if e["event"] == "start"]
                    + [(e["t"], -1) for e in entries if e["event"] == "end"], key=lambda x: (x[0], x[1]))  # fmt: skip
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


@pytest.mark.slow
def test_a_group_limit_holds_across_worker_processes(redis_conn, workers):
    for n in range(5):
        workers.start(Q, name=f"grp-{n}")
    enqueue_many(redis_conn, [("semantics.record", {"tag": f"g{n}", "sleep": 0.2},
                               {"queue": Q, "group": "g", "groupConcurrency": 2}) for n in range(20)]
                 + [("semantics.record", {"tag": f"h{n}", "sleep": 0.2}, {"queue": Q, "group": "h"})
                    for n in range(20)])  # fmt: skip
    wait_for(lambda: len(runs(redis_conn, event="end")) == 40, timeout=90, message="40 jobs to end")
    entries = [json.loads(raw) for raw in redis_conn.lrange("test:runs", 0, -1)]
    assert _most_at_once([e for e in entries if e["tag"].startswith("g")]) <= 2  # whichever process took them
    assert sorted(e["tag"] for e in entries if e["event"] == "start") == sorted(
        [f"g{n}" for n in range(20)] + [f"h{n}" for n in range(20)])  # each once
