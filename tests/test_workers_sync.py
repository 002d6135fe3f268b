"""The sync queue (workers/sync.py) end to end: a real worker, the test's PostgreSQL and Redis, and a loopback HTTP
server playing the primary and the fallback provider."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import pytest

from app.errors import ConfigError, InvalidJobError, JobStateError
from app.runtime.control import run_now
from app.runtime.enqueue import enqueue, enqueue_many
from app.runtime.flows import MAX_BATCH_JOBS, batch_status
from app.runtime.groups import group_stats
from app.runtime.jobs import describe_job, fetch_job
from app.tasks import queue_keys
from queues import JOB_KEY_PREFIX, batch_key, job_key, sync_fanout_key
from tests.conftest import TOKEN
from tests.fixtures import wait_for
from tests.waits import status, stays
from workers._sync_fanout import FANOUT_TTL, fan_out
from workers._sync_settings import Provider, SyncSettings
from workers._sync_store import content_hash
from workers.sync import CACHE_TTL, FANOUT_BATCH

pytest_plugins = ["tests.worker_processes", "tests.handler_runs", "tests.http_service"]

ZERO_SOURCES = {"primary": 0, "fallback": 0, "cache": 0}


def _seed(handlers, workspace: str, records: dict) -> None:
    """Track `records` (external id -> data, None: never fetched) in `workspace`."""
    rows = [
        (workspace, external_id, json.dumps(data), content_hash(data)) if data is not None
        else (workspace, external_id, None, None)
        for external_id, data in records.items()
    ]  # fmt: skip
    with handlers.db() as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO sync_items (workspace_id, external_id, data, content_hash) VALUES (%s, %s, %s::jsonb, %s)",
            rows,
        )


def _items(handlers, workspace: str) -> dict:
    with handlers.db() as conn:
        rows = conn.execute("SELECT * FROM sync_items WHERE workspace_id = %s", (workspace,)).fetchall()
    return {row["external_id"]: row for row in rows}


def _runs(handlers, workspace: str | None = None) -> list[dict]:
    with handlers.db() as conn:
        return conn.execute(
            "SELECT * FROM sync_runs WHERE %(w)s::text IS NULL OR workspace_id = %(w)s ORDER BY id", {"w": workspace}
        ).fetchall()


def _serve(http_service, prefix: str, records: dict) -> None:
    for external_id, data in records.items():
        http_service.route("GET", f"{prefix}/items/{external_id}", data)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _providers(monkeypatch, primary: str, fallback: str | None = None) -> None:
    monkeypatch.setenv("SYNC_PRIMARY_URL", primary)
    monkeypatch.setenv("SYNC_PRIMARY_TOKEN", "primary-secret")
    if fallback:
        monkeypatch.setenv("SYNC_FALLBACK_URL", fallback)
        monkeypatch.setenv("SYNC_FALLBACK_TOKEN", "fallback-secret")


def test_change_detection_counts_new_updated_unchanged_and_gone_items(handlers, http_service, monkeypatch):
    records = {"a": {"id": "a", "v": 1}, "b": {"id": "b", "v": 1}, "c": {"id": "c", "tags": ["x", "y"]}}
    _seed(handlers, "acme", {**dict.fromkeys(records), "gone": None})
    _serve(http_service, "/p", records)  # "gone" is at neither provider: both answer 404
    _providers(monkeypatch, http_service.url + "/p", http_service.url + "/f")
    handlers.start("sync")

    first = handlers.run("sync.manual", {"workspaceId": "acme"})
    assert first["status"] == "completed", first["error"]
    assert {k: first["result"][k] for k in ("new", "updated", "unchanged", "failed")} == {
        "new": 3, "updated": 0, "unchanged": 0, "failed": 1}
    assert (first["progress"]["processed"], first["progress"]["failed"]) == (3, 1)
    after_first = _items(handlers, "acme")
    assert after_first["gone"]["data"] is None and "gone" in after_first["gone"]["last_error"]
    assert "primary: not found (HTTP 404)" in after_first["gone"]["last_error"]
    assert "fallback: not found (HTTP 404)" in after_first["gone"]["last_error"]
    assert after_first["a"]["data"] == records["a"] and after_first["a"]["provider"] == "primary"
    assert after_first["a"]["content_hash"] == content_hash(records["a"])
    assert all(r.headers["authorization"] == "Bearer primary-secret" for r in http_service.received(path="/p/items/a"))

    http_service.route("GET", "/p/items/b", {"id": "b", "v": 2})
    second = handlers.run("sync.manual", {"workspaceId": "acme", "forceUpdate": True})
    assert second["status"] == "completed", second["error"]
    assert {k: second["result"][k] for k in ("new", "updated", "unchanged", "failed")} == {
        "new": 0, "updated": 1, "unchanged": 2, "failed": 1}
    after_second = _items(handlers, "acme")
    assert after_second["b"]["data"] == {"id": "b", "v": 2}
    assert after_second["b"]["changed_at"] > after_first["b"]["changed_at"]
    for unchanged in ("a", "c"):  # the record is not rewritten: only when it was last fetched
        assert after_second[unchanged]["changed_at"] == after_first[unchanged]["changed_at"]
        assert after_second[unchanged]["synced_at"] > after_first[unchanged]["synced_at"]

    runs = _runs(handlers, "acme")
    assert [(r["job_id"], r["new_count"], r["updated_count"], r["unchanged_count"], r["failed_count"]) for r in runs] \
        == [(first["id"], 3, 0, 0, 1), (second["id"], 0, 1, 2, 1)]
    assert runs[1]["sources"] == {**ZERO_SOURCES, "primary": 3}

    nobody = handlers.run("sync.manual", {"workspaceId": "nobody"})
    assert nobody["status"] == "completed", nobody["error"]
    assert (nobody["result"]["items"], nobody["result"]["new"], nobody["result"]["failed"]) == (0, 0, 0)
    assert "tracks no items" in nobody["progress"]["message"]


@pytest.mark.parametrize("primary_down", ["answers 503", "refuses connections"])
def test_a_primary_that_is_down_is_replaced_by_the_fallback(handlers, http_service, monkeypatch, primary_down):
    records = {"r1": {"n": 1}, "r2": {"n": 2}, "r3": {"n": 3}}
    _seed(handlers, "w", {"r1": {"n": 0}, "r2": None, "r3": None})
    if primary_down == "answers 503":
        primary = http_service.url + "/p"
        for external_id in records:
            http_service.route("GET", f"/p/items/{external_id}", (503, {}, b"maintenance"))
    else:
        primary = f"http://127.0.0.1:{_closed_port()}"
    _serve(http_service, "/f", records)
    _providers(monkeypatch, primary, http_service.url + "/f")
    handlers.start("sync")

    job = handlers.run("sync.manual", {"workspaceId": "w"})
    assert job["status"] == "completed", job["error"]
    assert (job["result"]["new"], job["result"]["updated"], job["result"]["failed"]) == (2, 1, 0)
    assert job["result"]["sources"] == {**ZERO_SOURCES, "fallback": 3}
    items = _items(handlers, "w")
    assert {i: (row["provider"], row["data"]) for i, row in items.items()} == {
        i: ("fallback", data) for i, data in records.items()}
    assert [row["sources"] for row in _runs(handlers)] == [{**ZERO_SOURCES, "fallback": 3}]
    fallback_requests = http_service.received(path="/f/items/r1")
    assert [r.headers["authorization"] for r in fallback_requests] == ["Bearer fallback-secret"]
    if primary_down == "answers 503":
        assert len(http_service.received(path="/p/items/r1")) == 1  # asked once, then the fallback


def test_answers_are_cached_for_six_hours_and_force_update_bypasses_the_cache(handlers, http_service, monkeypatch):
    records = {f"c{n}": {"n": n} for n in range(3)}
    _seed(handlers, "w", dict.fromkeys(records))
    _serve(http_service, "/p", records)
    _providers(monkeypatch, http_service.url + "/p")
    monkeypatch.setenv("SAVE_SYNC_STATS", "false")
    handlers.start("sync")

    first = handlers.run("sync.manual", {"workspaceId": "w"})
    assert first["status"] == "completed", first["error"]
    assert len(http_service.received()) == 3
    keys = list(handlers.redis.scan_iter(match="bullrq:cache:sync:*"))
    assert len(keys) == 3 and all(CACHE_TTL - 60 < handlers.redis.ttl(k) <= CACHE_TTL for k in keys)

    http_service.route("GET", "/p/items/c1", {"n": 100})  # the provider changes; the cache still holds the old one
    cached = handlers.run("sync.manual", {"workspaceId": "w"})
    assert cached["status"] == "completed", cached["error"]
    assert len(http_service.received()) == 3  # no request reached the provider
    assert cached["result"]["sources"] == {**ZERO_SOURCES, "cache": 3}
    assert (cached["result"]["unchanged"], cached["result"]["updated"]) == (3, 0)
    assert {row["provider"] for row in _items(handlers, "w").values()} == {"primary"}  # who gave the cached answer

    forced = handlers.run("sync.manual", {"workspaceId": "w", "forceUpdate": True})
    assert forced["status"] == "completed", forced["error"]
    assert len(http_service.received()) == 6
    assert forced["result"]["sources"] == {**ZERO_SOURCES, "primary": 3}
    assert (forced["result"]["unchanged"], forced["result"]["updated"]) == (2, 1)
    assert _items(handlers, "w")["c1"]["data"] == {"n": 100}
    again = handlers.run("sync.manual", {"workspaceId": "w"})  # the forced run refreshed the cache
    assert again["result"]["sources"] == {**ZERO_SOURCES, "cache": 3} and again["result"]["unchanged"] == 3
    assert _runs(handlers) == []  # SAVE_SYNC_STATS=false


def test_providers_down_retry_the_job_then_fail_it_keeping_the_records(handlers, http_service, monkeypatch):
    _seed(handlers, "w", {"x": {"old": True}, "y": None})
    for external_id in ("x", "y"):
        http_service.route("GET", f"/p/items/{external_id}", (502, {}, b"bad gateway"))
    _providers(monkeypatch, http_service.url + "/p", f"http://127.0.0.1:{_closed_port()}")
    handlers.start("sync")

    job = handlers.run("sync.manual", {"workspaceId": "w"}, {"attempts": 2, "backoff": {"type": "fixed", "delay": 1}})
    assert job["status"] == "failed"
    assert "ServiceUnavailableError" in job["error"] and "providers are unavailable" in job["error"]
    assert job["attempt"] == 2
    assert len(http_service.received(path="/p/items/x")) == 2  # once per attempt
    items = _items(handlers, "w")
    assert items["x"]["data"] == {"old": True} and items["y"]["data"] is None
    assert "primary: unavailable (HTTP 502)" in items["x"]["last_error"]
    assert "fallback: unreachable" in items["x"]["last_error"]
    assert "secret" not in job["error"] + items["x"]["last_error"]
    assert [(r["job_id"], r["failed_count"]) for r in _runs(handlers)] == [(job["id"], 2)]  # one row per job


def test_batches_of_fifty_with_at_most_five_requests_in_flight(handlers, http_service, monkeypatch):
    ids = [f"item-{n:03d}" for n in range(120)]
    lock = threading.Lock()
    state = {"in_flight": 0, "max": 0}
    spans: dict[str, tuple[float, float]] = {}
    # every answer is held until the test lets it go, a round at a time: each round the test waits for five
    # requests in flight (fewer at once never get there) and looks a moment for a sixth before it lets them go
    answer = threading.Semaphore(0)

    def provider(request):
        with lock:
            state["in_flight"] += 1
            state["max"] = max(state["max"], state["in_flight"])
        started = time.monotonic()
        assert answer.acquire(timeout=120)
        external_id = request.path.rsplit("/", 1)[1]
        with lock:
            state["in_flight"] -= 1
            spans[external_id] = (started, time.monotonic())
        return {"id": external_id}

    for external_id in ids:
        http_service.route("GET", f"/p/items/{external_id}", provider)
    _seed(handlers, "big", dict.fromkeys(ids))
    _providers(monkeypatch, http_service.url + "/p")
    handlers.start("sync")

    job_id = handlers.enqueue("sync.manual", {"workspaceId": "big"})
    for n in range(1, len(ids) // 5 + 1):  # 24 rounds of five
        wait_for(lambda: state["in_flight"] == 5, timeout=60, message="five requests in flight")
        stays(lambda: state["in_flight"] == 5, 0.2)  # no sixth
        answer.release(5)
        wait_for(lambda: len(spans) >= 5 * n, timeout=60, message="the answers to go")
    job = handlers.wait(job_id, timeout=120)
    assert job["status"] == "completed", job["error"]
    assert job["result"]["new"] == 120 and job["progress"]["processed"] == 120
    assert state["max"] == 5
    assert job["progress"]["message"].startswith("batch 3 of 3")
    batches = [ids[:50], ids[50:100], ids[100:]]
    for done, following in zip(batches, batches[1:]):  # a batch starts once the previous one has all its answers
        assert max(spans[i][1] for i in done) <= min(spans[i][0] for i in following)


def _rerun(handlers, job_id: str) -> dict:
    """Run sync.scheduled under `job_id`, again if it ran before (as a retry of that job would); returns its result."""
    handlers.redis.delete(job_key(job_id))  # enqueue never writes over a job
    enqueue(handlers.redis, "sync.scheduled", {}, None, job_id=job_id)
    job = handlers.wait(job_id)
    assert job["status"] == "completed", job["error"]
    return job["result"]


def _batches(redis_conn) -> set[str]:
    return {k.decode().rsplit(":", 1)[1] for k in redis_conn.scan_iter(match=batch_key("*"))}


def _done_jobs(redis_conn) -> list[str]:
    """The sync.scheduled-done jobs in Redis."""
    ids = [k.decode().removeprefix(JOB_KEY_PREFIX) for k in redis_conn.scan_iter(match=job_key("*"))]
    return [i for i in ids if (redis_conn.hget(job_key(i), "description") or b"").startswith(b"sync.scheduled-done(")]


def _history(handlers, task: str) -> list[dict]:
    with handlers.db() as conn:
        return conn.execute("SELECT * FROM job_runs WHERE task = %s ORDER BY id", (task,)).fetchall()


def test_the_scheduled_sync_fans_out_as_one_batch_whose_callback_sums_up_once(handlers, http_service, monkeypatch):
    workspaces = {"w1": {"a": None, "b": None}, "w2": {"c": None}, "team α/β with spaces": {"d": None}}
    for workspace, items in workspaces.items():
        _seed(handlers, workspace, items)
        _serve(http_service, "/p", {external_id: {"id": external_id} for external_id in items})
    _providers(monkeypatch, http_service.url + "/p")
    handlers.start("sync")

    first = _rerun(handlers, "scheduled-1")
    [batch_id] = first.pop("batches")
    assert first == {"workspaces": 3, "enqueued": 3, "already_enqueued": 0, "invalid": 0}
    assert [b.decode() for b in handlers.redis.lrange(sync_fanout_key("scheduled-1"), 0, -1)] == [batch_id]
    assert 0 < handlers.redis.ttl(sync_fanout_key("scheduled-1")) <= FANOUT_TTL
    callback = batch_status(handlers.redis, batch_id)["callbacks"]["onComplete"]["jobId"]
    done = handlers.wait(callback)
    assert done["status"] == "completed", done["error"]
    summary = {"scheduled_job_id": "scheduled-1", "batch_id": batch_id, "part": 1, "parts": 1, "workspaces": 3,
               "completed": 3, "failed": 0, "canceled": 0, "failures": [], "not_listed": 0}
    assert done["result"] == summary
    assert (done["progress"]["processed"], done["progress"]["failed"]) == (3, 0)
    assert done["data"] == {"scheduled_job_id": "scheduled-1", "part": 1, "parts": 1, "batch_id": batch_id}
    assert sorted(r["workspace_id"] for r in _runs(handlers)) == sorted(workspaces)
    shown = batch_status(handlers.redis, batch_id)
    assert (shown["state"], shown["total"], shown["completed"]) == ("completed", 3, 3)
    # its return value is the run's row in the history, once
    rows = wait_for(lambda: _history(handlers, "sync.scheduled-done"), message="the callback's history row")
    assert [(r["job_id"], r["status"], r["result"]) for r in rows] == [(callback, "completed", summary)]

    # the same scheduled job run again (a retry after its syncs ended): no second batch, nothing enqueued twice
    again = _rerun(handlers, "scheduled-1")
    assert again == {"workspaces": 3, "enqueued": 0, "already_enqueued": 3, "invalid": 0, "batches": [batch_id]}
    stays(lambda: len(_runs(handlers)) == 3 and len(_done_jobs(handlers.redis)) == 1, 1.0)
    assert _batches(handlers.redis) == {batch_id}
    assert len(_history(handlers, "sync.scheduled-done")) == 1

    second = _rerun(handlers, "scheduled-2")  # the next scheduled run syncs every workspace again, in its own batch
    assert second["enqueued"] == 3 and second["batches"] != [batch_id]
    wait_for(lambda: len(_runs(handlers)) == 6, message="the next three syncs")
    assert _batches(handlers.redis) == {batch_id, *second["batches"]}
    wait_for(lambda: len(_history(handlers, "sync.scheduled-done")) == 2, message="the second run's callback")


def test_a_retry_while_the_syncs_still_run_reuses_the_batch(handlers, http_service, monkeypatch):
    gate = threading.Event()
    http_service.route("GET", "/p/items/a", lambda request: gate.wait(60) and {"id": "a"})
    _seed(handlers, "slow", {"a": None})
    _providers(monkeypatch, http_service.url + "/p")
    handlers.start("sync", name="sync-1")
    handlers.start("sync", name="sync-2")  # one runs the sync, held; the other the scheduled job's retry

    first = _rerun(handlers, "scheduled-r")
    wait_for(lambda: http_service.received(path="/p/items/a"), message="the sync to be under way")
    again = _rerun(handlers, "scheduled-r")  # its sync has not ended: the batch is pending
    assert again == {"workspaces": 1, "enqueued": 0, "already_enqueued": 1, "invalid": 0,
                     "batches": first["batches"]}
    gate.set()
    [batch_id] = first["batches"]
    done = handlers.wait(batch_status(handlers.redis, batch_id)["callbacks"]["onComplete"]["jobId"])
    assert done["status"] == "completed" and done["result"]["completed"] == 1
    assert len(_runs(handlers)) == 1 and len(http_service.received(path="/p/items/a")) == 1


def test_a_failed_workspace_fails_the_summary_naming_it(handlers, http_service, monkeypatch):
    _seed(handlers, "fine", {"a": None})
    _seed(handlers, "down", {"x": None, "y": None})
    _serve(http_service, "/p", {"a": {"id": "a"}})
    for external_id in ("x", "y"):
        http_service.route("GET", f"/p/items/{external_id}", (503, {}, b"maintenance"))
    _providers(monkeypatch, http_service.url + "/p")
    handlers.start("sync")

    [batch_id] = _rerun(handlers, "scheduled-f")["batches"]
    callback = batch_status(handlers.redis, batch_id)["callbacks"]["onComplete"]["jobId"]
    scheduled = queue_keys("sync").scheduled

    def ended() -> bool:  # the sync of "down" is retried 30 s later: made due at once instead
        for job_id in handlers.redis.zrange(scheduled, 0, -1):
            with contextlib.suppress(JobStateError):  # promoted meanwhile by the worker
                run_now(handlers.redis, job_id.decode())
        return status(handlers.redis, callback) in ("finished", "failed")

    wait_for(ended, timeout=60, message="the batch's callback to end")
    done = handlers.wait(callback)
    assert done["status"] == "failed" and done["attempt"] == 1  # for good: no retry
    [down] = _runs(handlers, "down")
    assert handlers.wait(down["job_id"])["attempt"] == 3  # three attempts, then failed for good
    message = done["error"].strip().splitlines()[-1]
    assert (f"PermanentFailure: 1 of 2 workspaces failed for good: 'down'; scheduled sync scheduled-f, batch "
            f"{batch_id}: 1 completed, 0 canceled; errors: 'down' (job {down['job_id']}): ") in message, message
    assert "ServiceUnavailableError" in message and "providers are unavailable" in message
    assert (done["progress"]["processed"], done["progress"]["failed"]) == (1, 1)
    rows = wait_for(lambda: _history(handlers, "sync.scheduled-done"), message="the callback's history row")
    assert [(r["status"], r["items_processed"], r["items_failed"], r["error_type"]) for r in rows] == [
        ("failed", 1, 1, "PermanentFailure")]
    assert "'down'" in rows[0]["error_message"]


def test_fan_out_creates_one_batch_per_part_and_a_retry_only_the_parts_missing(redis_conn):
    workspaces = [f"w{n}" for n in range(5)]
    run = fan_out(redis_conn, "sched-parts", workspaces, 2)
    assert run["enqueued"] == 5 and len(run["batches"]) == 3
    members = []
    for number, batch_id in enumerate(run["batches"], 1):
        shown = batch_status(redis_conn, batch_id)
        callback = describe_job(fetch_job(shown["callbacks"]["onComplete"]["jobId"], redis_conn))
        assert (callback["type"], callback["status"]) == ("sync.scheduled-done", "deferred")
        assert callback["data"] == {"scheduled_job_id": "sched-parts", "part": number, "parts": 3, "batch_id": batch_id}
        members.append(shown["total"])
    assert members == [2, 2, 1]
    assert fan_out(redis_conn, "sched-parts", workspaces, 2) == {"batches": run["batches"], "enqueued": 0}
    # a worker that died before it recorded the last part: the retry creates that part only
    redis_conn.rpop(sync_fanout_key("sched-parts"))
    retried = fan_out(redis_conn, "sched-parts", workspaces, 2)
    assert retried["enqueued"] == 1 and retried["batches"][:2] == run["batches"][:2]
    assert retried["batches"][2] != run["batches"][2]
    assert fan_out(redis_conn, "sched-none", [], 2) == {"batches": [], "enqueued": 0}
    assert FANOUT_BATCH == MAX_BATCH_JOBS


def test_the_callback_refuses_bad_data_and_a_batch_that_has_not_ended(handlers):
    for data, wanted in [
        ({"scheduledJobId": "s"}, "batchId"),
        ({"batchId": "b", "scheduledJobId": ""}, "scheduledJobId"),
        ({"batchId": "b", "scheduledJobId": "s", "part": 2, "parts": 1}, "part"),
    ]:
        with pytest.raises(InvalidJobError, match=wanted):
            handlers.enqueue("sync.scheduled-done", data)
    handlers.start("sync")
    job = handlers.run("sync.scheduled-done", {"batchId": "nope", "scheduledJobId": "s"})
    assert job["status"] == "failed" and "batch nope of scheduled sync s does not exist" in job["error"]


def test_bad_data_is_refused_at_enqueue(handlers, client):
    for data, wanted in [
        ({}, "missing .workspaceId."),  # the name users write, not the handler argument
        ({"workspaceId": ""}, "workspaceId"),
        ({"workspaceId": "   "}, "workspaceId"),
        ({"workspaceId": "w" * 201}, "workspaceId"),
        ({"workspaceId": 7}, "workspaceId"),
        ({"workspaceId": "w", "forceUpdate": "yes"}, "forceUpdate"),
        ({"workspaceId": "w", "since": "yesterday"}, "since"),
    ]:
        with pytest.raises(InvalidJobError, match=wanted):
            handlers.enqueue("sync.manual", data)
    with pytest.raises(InvalidJobError):
        handlers.enqueue("sync.scheduled", {"workspaceId": "w"})
    response = client.post("/api/admin/jobs", headers={"Authorization": f"Bearer {TOKEN}"},
                           json={"type": "sync.manual", "data": {"workspaceId": ""}})
    assert response.status_code == 400 and "workspaceId" in response.get_json()["error"]["message"]


def test_without_a_primary_provider_the_job_fails_at_once(handlers, monkeypatch):
    monkeypatch.delenv("SYNC_PRIMARY_URL", raising=False)
    monkeypatch.setenv("SYNC_FALLBACK_URL", "http://127.0.0.1:9/")
    handlers.start("sync")
    job = handlers.run("sync.manual", {"workspaceId": "w"})
    assert job["status"] == "failed" and job["attempt"] == 1
    assert "PermanentFailure" in job["error"] and "SYNC_PRIMARY_URL is not set" in job["error"]


# -- settings and helpers, no servers -------------------------------------------------------------------------------


def test_settings_from_the_environment():
    settings = SyncSettings.from_env({"SYNC_PRIMARY_URL": "https://p.example/api/", "SYNC_PRIMARY_TOKEN": "tok"})
    assert [p.name for p in settings.providers] == ["primary"] and settings.save_stats is True
    assert settings.providers[0].headers()["Authorization"] == "Bearer tok"
    assert "tok" not in repr(settings)
    both = SyncSettings.from_env({"SYNC_PRIMARY_URL": "http://p", "SYNC_FALLBACK_URL": "http://f",
                                  "SAVE_SYNC_STATS": "0"})
    assert [p.name for p in both.providers] == ["primary", "fallback"] and both.save_stats is False
    assert "Authorization" not in both.providers[1].headers()
    for env, variable in [
        ({}, "SYNC_PRIMARY_URL"),
        ({"SYNC_PRIMARY_URL": "ftp://p"}, "SYNC_PRIMARY_URL"),
        ({"SYNC_PRIMARY_URL": "http://p", "SYNC_FALLBACK_URL": "p.example"}, "SYNC_FALLBACK_URL"),
        ({"SYNC_PRIMARY_URL": "http://p", "SAVE_SYNC_STATS": "maybe"}, "SAVE_SYNC_STATS"),
    ]:
        with pytest.raises(ConfigError, match=variable):
            SyncSettings.from_env(env)


def test_item_urls_encode_the_external_id():
    provider = Provider("primary", "http://p.example/v1/")
    assert provider.item_url("a/b c") == "http://p.example/v1/items/a%2Fb%20c"


def test_content_hash_ignores_key_order_and_spacing():
    assert content_hash({"a": 1, "b": [1, 2]}) == content_hash({"b": [1, 2], "a": 1})
    assert content_hash({"a": 1}) != content_hash({"a": 2})


def test_syncs_are_grouped_by_workspace_one_at_a_time(redis_conn):
    jobs = enqueue_many(redis_conn, [("sync.manual", {"workspaceId": w}, None) for w in ("a", "a", "b")])
    assert [fetch_job(job.id, redis_conn).group for job in jobs] == ["a", "a", "b"]
    assert group_stats(redis_conn, "sync")["groups"] == {"a": {"waiting": 2, "active": 0, "limit": 1},
                                                         "b": {"waiting": 1, "active": 0, "limit": 1}}
