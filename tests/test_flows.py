"""Flows on a real Redis, run by a worker in this process: jobs that wait for their parents (each
`onParentFailure`, cascades, parents missing or ended before), and batches whose callbacks fire exactly once."""

from __future__ import annotations

import json

import pytest
from rq.registry import DeferredJobRegistry, FailedJobRegistry

from app.errors import InvalidJobError
from app.runtime.control import _delete_jobs, cancel, delete, retry_failed, run_now
from app.runtime.enqueue import enqueue, enqueue_many
from app.runtime.flows import batch_status, create_batch
from app.runtime.job_list import list_jobs
from app.runtime.jobs import BullJob, State, describe_job, fetch_job
from app.runtime.redis_scripts import SCRIPTS
from app.runtime.stats import queue_stats
from app.runtime.worker import build_worker
from app.tasks import queue_keys
from queues import batch_key, dependents_key
from tests.conftest import TOKEN
from tests.fixtures import run_cli
from tests.handlers import runs
from tests.waits import status

pytestmark = pytest.mark.integration

Q = {"queue": "harvest"}
KEYS = queue_keys("harvest")


def _drain(redis_conn) -> None:
    build_worker(["harvest"], redis_conn, "flows-test").work(burst=True)


def _job(redis_conn, tag: str, kind: str = "semantics.record", **options) -> str:
    return enqueue(redis_conn, kind, {"tag": tag}, {**Q, **options}).id


def _ran(redis_conn) -> list[str]:
    return [entry["tag"] for entry in runs(redis_conn)]


def test_a_child_waits_deferred_until_its_parents_complete_then_reads_their_results(redis_conn):
    a, b = _job(redis_conn, "a"), _job(redis_conn, "b")
    child = _job(redis_conn, "child", "semantics.parents", dependsOn=[a, b])

    assert status(redis_conn, child) == "deferred"
    shown = describe_job(fetch_job(child, redis_conn))
    assert shown["status"] == "deferred" and shown["depends_on"] == [a, b]
    assert DeferredJobRegistry("harvest", connection=redis_conn).get_job_ids() == [child]  # RQ's own view
    assert queue_stats(redis_conn)["queues"]["harvest"]["deferred"] == 1
    assert [job["id"] for job in list_jobs(redis_conn, State.DEFERRED, "harvest")["jobs"]] == [child]
    assert redis_conn.smembers(dependents_key(a)) == {child.encode()}

    _drain(redis_conn)
    assert _ran(redis_conn) == ["a", "b", "child"]  # released by the last parent, run after both
    assert fetch_job(child, redis_conn).return_value() == {a: "a", b: "b"}
    assert not redis_conn.exists(dependents_key(a), dependents_key(b))
    assert redis_conn.zcard(KEYS.deferred) == 0


def test_a_parent_that_completed_before_counts_as_done(redis_conn):
    parent = _job(redis_conn, "parent")
    _drain(redis_conn)
    child = _job(redis_conn, "child", dependsOn=parent)
    assert status(redis_conn, child) == "queued"


def test_a_missing_parent_is_refused_and_nothing_is_created(redis_conn):
    with pytest.raises(InvalidJobError, match="dependsOn.*no job 'nope'"):
        _job(redis_conn, "child", dependsOn=["nope"])
    with pytest.raises(InvalidJobError, match="no job 'nope'"):
        enqueue_many(redis_conn, [("semantics.record", {"tag": "x"}, Q),
                                  ("semantics.record", {"tag": "y"}, {**Q, "dependsOn": ["nope"]})])  # fmt: skip
    assert redis_conn.llen(KEYS.queue) == 0 and not redis_conn.keys("rq:job:*")


def test_enqueue_many_may_chain_its_own_requests(redis_conn):
    first = enqueue(redis_conn, "semantics.record", {"tag": "first"}, Q)
    assert first.created
    # a request may name a job created earlier in the same call only by its id: known once created; here the
    # parent exists already and the two children wait for it
    many = enqueue_many(redis_conn, [("semantics.record", {"tag": t}, {**Q, "dependsOn": [first.id]})
                                     for t in ("c1", "c2")])  # fmt: skip
    assert [status(redis_conn, m.id) for m in many] == ["deferred", "deferred"]
    _drain(redis_conn)
    assert _ran(redis_conn) == ["first", "c1", "c2"]


@pytest.mark.parametrize(
    ("mode", "child_status", "grandchild_status"),
    [("fail", "failed", "failed"), ("cancel", "canceled", "failed"), ("ignore", "finished", "finished")],
)
def test_on_parent_failure(redis_conn, mode, child_status, grandchild_status):
    parent = _job(redis_conn, "parent", "semantics.permanent")
    child = _job(redis_conn, "child", dependsOn=[parent], onParentFailure=mode)
    grandchild = _job(redis_conn, "grandchild", dependsOn=[child])

    _drain(redis_conn)
    assert (status(redis_conn, child), status(redis_conn, grandchild)) == (child_status, grandchild_status)
    if mode != "ignore":
        assert _ran(redis_conn) == ["parent"]  # neither ran
        shown = describe_job(fetch_job(child, redis_conn))
        assert shown["error"] == f"parent {parent} failed"
        assert describe_job(fetch_job(grandchild, redis_conn))["error"] == f"parent {child} {child_status}"
        registry = KEYS.failed if child_status == "failed" else KEYS.canceled
        assert redis_conn.zscore(registry, child) is not None
        assert redis_conn.zcard(KEYS.deferred) == 0
    else:
        assert _ran(redis_conn) == ["parent", "child", "grandchild"]


def test_a_parent_that_failed_before_is_answered_at_once(redis_conn):
    parent = _job(redis_conn, "parent", "semantics.permanent")
    _drain(redis_conn)
    failed = _job(redis_conn, "failed", dependsOn=[parent])
    ignored = _job(redis_conn, "ignored", dependsOn=[parent], onParentFailure="ignore")
    assert status(redis_conn, failed) == "failed" and redis_conn.zscore(KEYS.failed, failed) is not None
    assert status(redis_conn, ignored) == "queued"


def test_a_canceled_or_deleted_parent_moves_its_children_on(redis_conn):
    held = _job(redis_conn, "held", "semantics.record", delay=60)
    child = _job(redis_conn, "child", dependsOn=[held])
    assert cancel(redis_conn, held) == "canceled"
    assert status(redis_conn, child) == "failed"

    waiting = _job(redis_conn, "waiting")
    child2 = _job(redis_conn, "child2", dependsOn=[waiting], onParentFailure="cancel")
    delete(redis_conn, waiting)
    assert status(redis_conn, child2) == "canceled"

    parent = _job(redis_conn, "parent")
    child3 = _job(redis_conn, "child3", dependsOn=[parent])
    assert cancel(redis_conn, child3) == "canceled"  # a deferred job can be canceled itself
    assert redis_conn.zcard(KEYS.deferred) == 0
    _drain(redis_conn)
    assert _ran(redis_conn) == ["parent"] and status(redis_conn, child3) == "canceled"


def test_bad_dependency_options_are_refused(redis_conn):
    for options, message in [
        ({"dependsOn": []}, "dependsOn"),
        ({"dependsOn": [1]}, "dependsOn"),
        ({"dependsOn": "x y"}, "dependsOn"),
        ({"dependsOn": ["a"], "onParentFailure": "explode"}, "onParentFailure"),
        ({"dependsOn": ["a"], "delay": 5}, "cannot be combined"),
    ]:
        with pytest.raises(InvalidJobError, match=message):
            enqueue(redis_conn, "semantics.record", {"tag": "x"}, {**Q, **options})


def _batch(redis_conn, tags_kinds, **callbacks):
    jobs = [(kind, {"tag": tag}, Q) for tag, kind in tags_kinds]
    made = {name: ("semantics.batch-done", {"tag": name}, Q) for name in callbacks}
    return create_batch(redis_conn, jobs, on_success=made.get("onSuccess"), on_complete=made.get("onComplete"))


def test_a_batch_fires_on_success_and_on_complete_once_when_every_job_completed(redis_conn):
    batch = _batch(redis_conn, [(f"j{n}", "semantics.record") for n in range(5)], onSuccess=1, onComplete=1)
    shown = batch_status(redis_conn, batch.id)
    assert (shown["state"], shown["total"], shown["pending"]) == ("active", 5, 5)
    assert {c["state"] for c in shown["callbacks"].values()} == {"deferred"}

    _drain(redis_conn)
    assert sorted(_ran(redis_conn)) == sorted([f"j{n}" for n in range(5)] + ["onSuccess", "onComplete"])
    assert _ran(redis_conn)[-2:] in (["onSuccess", "onComplete"], ["onComplete", "onSuccess"])
    shown = batch_status(redis_conn, batch.id)
    assert (shown["state"], shown["pending"], shown["completed"], shown["failed"]) == ("completed", 0, 5, 0)
    assert {c["state"] for c in shown["callbacks"].values()} == {"completed"}
    seen = fetch_job(batch.callbacks["onComplete"], redis_conn).return_value()
    assert seen == {"state": "completed", "total": 5, "completed": 5, "failed": 0, "canceled": 0}
    assert fetch_job(batch.job_ids[0], redis_conn).batch_id == batch.id
    assert 0 < redis_conn.ttl(batch_key(batch.id))


def test_a_batch_with_a_failure_cancels_on_success_and_runs_on_complete(redis_conn):
    batch = _batch(redis_conn, [("ok", "semantics.record"), ("bad", "semantics.permanent")],
                   onSuccess=1, onComplete=1)  # fmt: skip
    _drain(redis_conn)
    shown = batch_status(redis_conn, batch.id)
    assert (shown["state"], shown["completed"], shown["failed"]) == ("failed", 1, 1)
    assert shown["callbacks"]["onSuccess"] == {"jobId": batch.callbacks["onSuccess"], "state": "canceled",
                                               "fired": False}  # fmt: skip
    assert shown["callbacks"]["onComplete"]["state"] == "completed" and shown["callbacks"]["onComplete"]["fired"]
    assert _ran(redis_conn).count("onComplete") == 1 and "onSuccess" not in _ran(redis_conn)


def test_a_batch_whose_jobs_all_ended_while_it_was_created_fires_when_sealed(redis_conn):
    parent = _job(redis_conn, "parent", "semantics.permanent")
    _drain(redis_conn)
    jobs = [("semantics.record", {"tag": f"j{n}"}, {**Q, "dependsOn": [parent]}) for n in range(3)]
    batch = create_batch(redis_conn, jobs, on_complete=("semantics.batch-done", {"tag": "done"}, Q))
    shown = batch_status(redis_conn, batch.id)
    assert (shown["state"], shown["failed"], shown["pending"]) == ("failed", 3, 0)
    assert shown["callbacks"]["onComplete"]["state"] == "waiting"
    _drain(redis_conn)
    assert _ran(redis_conn) == ["parent", "done"]


def test_a_batch_job_retried_by_hand_before_the_batch_ends_counts_again(redis_conn):
    gate = _job(redis_conn, "gate", delay=60)  # keeps the batch open: its other job waits for it
    batch = create_batch(redis_conn, [("semantics.fail-while", {"tag": "f"}, Q),
                                      ("semantics.record", {"tag": "late"}, {**Q, "dependsOn": [gate]})],
                         on_complete=("semantics.batch-done", {"tag": "done"}, Q))  # fmt: skip
    redis_conn.set("test:broken:f", 1)
    _drain(redis_conn)
    assert batch_status(redis_conn, batch.id)["failed"] == 1
    redis_conn.delete("test:broken:f")
    retry_failed(redis_conn, "harvest")
    assert (batch_status(redis_conn, batch.id)["failed"], batch_status(redis_conn, batch.id)["pending"]) == (0, 2)
    redis_conn.zadd(KEYS.scheduled, {gate: 0})  # due now
    _drain(redis_conn)
    shown = batch_status(redis_conn, batch.id)
    assert (shown["state"], shown["completed"]) == ("completed", 2), shown


def test_bad_batches_are_refused_before_anything_is_written(redis_conn):
    for jobs, message in [
        ([], "1 to 10000 jobs"),
        ([("semantics.record", {"tag": "x"}, {**Q, "jobId": "k"})], "job 0: option 'jobId'"),
        ([("semantics.record", {"tag": "x"}, Q), ("no.such", {}, Q)], "job 1"),
    ]:
        with pytest.raises(InvalidJobError, match=message):
            create_batch(redis_conn, jobs)
    with pytest.raises(InvalidJobError, match="onSuccess: options"):
        create_batch(redis_conn, [("semantics.record", {"tag": "x"}, Q)],
                     on_success=("semantics.record", {"tag": "s"}, {**Q, "delay": 3}))  # fmt: skip
    assert not redis_conn.keys("*")


def test_the_api_creates_dependent_jobs_and_batches_and_shows_them(client, redis_conn):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    parent = client.post("/api/admin/jobs", headers=auth, json={"type": "system.ping", "options": Q}).get_json()
    created = client.post("/api/admin/jobs", headers=auth, json={
        "type": "system.ping", "options": {**Q, "dependsOn": [parent["jobId"]], "onParentFailure": "cancel"}})
    assert created.status_code == 201
    shown = client.get(f"/api/admin/jobs/{created.get_json()['jobId']}", headers=auth).get_json()
    assert (shown["status"], shown["depends_on"]) == ("deferred", [parent["jobId"]])
    listed = client.get("/api/admin/jobs?status=deferred&queueName=harvest", headers=auth).get_json()
    assert [job["id"] for job in listed["jobs"]] == [shown["id"]]
    assert client.get("/api/admin/jobs/stats", headers=auth).get_json()["queues"]["harvest"]["deferred"] == 1
    missing = client.post("/api/admin/jobs", headers=auth, json={"type": "system.ping",
                                                                  "options": {**Q, "dependsOn": ["nope"]}})
    assert missing.status_code == 400 and "no job 'nope'" in missing.get_json()["error"]["message"]

    body = {"jobs": [{"type": "system.ping", "data": {"echo": n}, "options": Q} for n in range(3)],
            "onComplete": {"type": "semantics.batch-done", "data": {"tag": "done"}, "options": Q}}
    made = client.post("/api/admin/batches", headers=auth, json=body)
    assert made.status_code == 201, made.get_json()
    batch = made.get_json()
    assert len(batch["jobIds"]) == 3 and set(batch["callbacks"]) == {"onComplete"}
    _drain(redis_conn)
    shown = client.get(f"/api/admin/batches/{batch['batchId']}", headers=auth).get_json()
    assert (shown["state"], shown["total"], shown["completed"]) == ("completed", 3, 3)
    assert shown["callbacks"]["onComplete"] == {"jobId": batch["callbacks"]["onComplete"], "state": "completed",
                                                "fired": True}  # fmt: skip
    assert client.get("/api/admin/batches/nope", headers=auth).status_code == 404
    for bad, message in [({"jobs": "x"}, "'jobs' must be a list"), ({"jobs": [1]}, "job 0: a job must be"),
                         ({"jobs": [], "x": 1}, "unknown field 'x'"), ({"jobs": []}, "1 to 10000 jobs"),
                         ({"jobs": [{"type": "no.such"}]}, "job 0: unknown task type")]:  # fmt: skip
        answer = client.post("/api/admin/batches", headers=auth, json=bad)
        assert answer.status_code == 400 and message in answer.get_json()["error"]["message"], answer.get_json()


def test_the_cli_enqueues_dependent_jobs_and_batches(redis_conn, tmp_path):
    parent = run_cli("bullrq", "enqueue", "system.ping", "--queue", "harvest").stdout.strip()
    child = run_cli("bullrq", "enqueue", "system.ping", "--queue", "harvest", "--depends-on", parent,
                    "--on-parent-failure", "ignore")  # fmt: skip
    assert child.returncode == 0, child.stderr
    assert status(redis_conn, child.stdout.strip()) == "deferred"
    missing = run_cli("bullrq", "enqueue", "system.ping", "--queue", "harvest", "--depends-on", "nope")
    assert missing.returncode == 2 and "no job 'nope'" in missing.stderr

    spec = tmp_path / "batch.json"
    spec.write_text(json.dumps({"jobs": [{"type": "system.ping", "options": Q}],
                                "onSuccess": {"type": "system.ping", "options": Q}}))  # fmt: skip
    made = run_cli("bullrq", "batches", "create", str(spec))
    assert made.returncode == 0, made.stderr
    batch = json.loads(made.stdout)
    shown = json.loads(run_cli("bullrq", "batches", "show", batch["batchId"]).stdout)
    assert (shown["state"], shown["total"], shown["pending"]) == ("active", 1, 1)
    assert run_cli("bullrq", "batches", "show", "nope").returncode == 2


def test_a_callback_canceled_by_hand_is_not_one_of_its_batch_jobs(redis_conn):
    batch = _batch(redis_conn, [("j1", "semantics.record"), ("j2", "semantics.record")], onSuccess=1, onComplete=1)
    assert cancel(redis_conn, batch.callbacks["onComplete"]) == "canceled"
    shown = batch_status(redis_conn, batch.id)
    assert (shown["state"], shown["pending"], shown["canceled"]) == ("active", 2, 0)
    _drain(redis_conn)
    shown = batch_status(redis_conn, batch.id)
    assert shown["state"] == "completed" and sorted(_ran(redis_conn)) == ["j1", "j2", "onSuccess"]
    assert (shown["callbacks"]["onSuccess"]["fired"], shown["callbacks"]["onComplete"]["fired"]) == (True, False)


def test_a_job_put_back_by_hand_still_waits_for_its_parents(redis_conn):
    parent = _job(redis_conn, "parent", delay=60)
    child = _job(redis_conn, "child", dependsOn=[parent])
    cancel(redis_conn, child)
    assert run_now(redis_conn, child) == "requeued"
    assert status(redis_conn, child) == "deferred"  # not run before its parent
    run_now(redis_conn, parent)
    _drain(redis_conn)
    assert _ran(redis_conn) == ["parent", "child"]

    doomed = _job(redis_conn, "doomed", "semantics.permanent")
    orphan = _job(redis_conn, "orphan", dependsOn=[doomed])
    _drain(redis_conn)
    assert retry_failed(redis_conn, "harvest", [orphan]) == []  # its parent failed: it stays failed
    assert status(redis_conn, orphan) == "failed"


def test_a_batch_job_requeued_by_rqs_own_tools_is_counted_once(redis_conn):
    batch = create_batch(redis_conn, [("semantics.fail-while", {"tag": "f"}, Q),
                                      ("semantics.record", {"tag": "late"}, {**Q, "delay": 60})],
                         on_complete=("semantics.batch-done", {"tag": "done"}, Q))  # fmt: skip
    redis_conn.set("test:broken:f", 1)
    _drain(redis_conn)
    redis_conn.delete("test:broken:f")
    FailedJobRegistry("harvest", connection=redis_conn, job_class=BullJob).requeue(batch.job_ids[0])  # RQ's requeue
    _drain(redis_conn)
    shown = batch_status(redis_conn, batch.id)
    assert (shown["state"], shown["pending"], shown["completed"], shown["failed"]) == ("active", 1, 1, 0)
    assert "done" not in _ran(redis_conn)  # the delayed job has not ended: no callback yet


def test_a_job_a_worker_took_meanwhile_is_never_deleted_under_it(redis_conn):
    job = _job(redis_conn, "job")
    redis_conn.hset(f"rq:job:{job}", "status", "started")  # as if taken after its id was read elsewhere
    _delete_jobs(redis_conn, [job])
    assert status(redis_conn, job) == "started"


def _recheck(redis_conn) -> int:
    """The maintenance look at deferred jobs, at once (no wait between looks)."""
    return SCRIPTS.recheck(redis_conn, [KEYS.deferred], [100, 0, 100, 0])


def test_a_parent_deleted_behind_the_job_paths_back_is_seen_by_the_next_look(redis_conn):
    gone, kept = _job(redis_conn, "gone", delay=60), _job(redis_conn, "kept", delay=60)
    failing = _job(redis_conn, "failing", dependsOn=[gone])
    ignoring = _job(redis_conn, "ignoring", dependsOn=[gone], onParentFailure="ignore")
    waiting = _job(redis_conn, "waiting", dependsOn=[kept])
    BullJob.fetch(gone, connection=redis_conn).delete()  # RQ's own delete: no script of ours sees it
    assert status(redis_conn, failing) == "deferred"
    assert _recheck(redis_conn) == 2
    assert describe_job(fetch_job(failing, redis_conn))["error"] == f"parent {gone} gone"
    assert status(redis_conn, ignoring) == "queued" and status(redis_conn, waiting) == "deferred"
    assert _recheck(redis_conn) == 0  # the one still waiting is left alone, again and again


def test_a_batch_whose_creator_died_before_sealing_it_is_sealed_by_the_next_look(redis_conn, monkeypatch):
    real = type(SCRIPTS.seal).__call__
    monkeypatch.setattr(type(SCRIPTS.seal), "__call__",  # the creator dies just before sealing
                        lambda self, *args: None if self.name == "seal" else real(self, *args))
    batch = _batch(redis_conn, [("j1", "semantics.record")], onComplete=1)
    monkeypatch.undo()
    _drain(redis_conn)
    assert batch_status(redis_conn, batch.id)["state"] == "creating"  # j1 ended, nobody may fire yet
    assert _recheck(redis_conn) == 1
    _drain(redis_conn)
    assert batch_status(redis_conn, batch.id)["state"] == "completed" and _ran(redis_conn) == ["j1", "onComplete"]
