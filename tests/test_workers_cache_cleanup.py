"""The cache-cleanup queue (workers/cache_cleanup.py) end to end: a real worker, the real Redis and PostgreSQL."""

from __future__ import annotations

import socket

import pytest

from app.errors import ConfigError, InvalidJobError
from app.tasks import get_task
from workers._cleanup_glob import compile_glob, is_protected, literal_prefix, pattern_problem
from workers._cleanup_redis import cursor_key, verdict
from workers.cache_cleanup import CleanupSettings

pytest_plugins = ["tests.worker_processes", "tests.handler_runs", "tests.http_service"]

#: seconds: the idle limit the worker tests pass; a key touched by the test stays far below it however slow the run
IDLE = 600
#: seconds of idleness planted keys start with (RESTORE ... IDLETIME): far above IDLE, with no waiting
AGED = 3600
#: bytes per planted value: big enough for INFO used_memory to show the keys leaving
VALUE = b"x" * 2000
#: quick retries for the failure tests
RETRY_FAST = {"attempts": 2, "backoff": {"type": "fixed", "delay": 1}}


def _plant(redis_conn, keys, ttl: int | None = None, idle: int | None = AGED) -> None:
    """Set `keys` to VALUE, already idle for `idle` seconds (None: fresh)."""
    redis_conn.set("test:plant", VALUE)
    dump = redis_conn.dump("test:plant")
    redis_conn.delete("test:plant")
    pipe = redis_conn.pipeline(transaction=False)
    for key in keys:
        if idle is None:
            pipe.set(key, VALUE, ex=ttl)
        else:
            pipe.restore(key, (ttl or 0) * 1000, dump, replace=True, idletime=idle)
    pipe.execute()


def _calls(redis_conn, command: str) -> int:
    return redis_conn.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0)


def _existing(redis_conn, keys) -> set[str]:
    pipe = redis_conn.pipeline(transaction=False)
    for key in keys:
        pipe.exists(key)
    return {key for key, found in zip(keys, pipe.execute(), strict=True) if found}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- pure functions -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("bullrq:cache:*", None),
        ("bullrq:cache:ai:*", None),
        ("other:session:*", None),
        ("rq:*", "RQ's or bullrq's"),
        ("bullrq:*", "RQ's or bullrq's"),
        ("bullrq:sync:*", "RQ's or bullrq's"),
        ("*", "fixed namespace"),
        ("bullrq:cache*", "fixed namespace"),  # would reach bullrq:cache-cleanup:* (the queue's own keys)
        ("r?:*", "fixed namespace"),
        ("cache:[ab", "unclosed"),
        (" cache:*", "spaces"),
    ],
)
def test_pattern_problem_refuses_patterns_reaching_outside_one_namespace(pattern, problem):
    found = pattern_problem(pattern)
    assert (found is None) if problem is None else (problem in found)


def test_literal_prefix_and_protected_keys():
    assert literal_prefix("bullrq:cache:sync:*") == b"bullrq:cache:sync:"
    assert literal_prefix(r"a\*b:c?") == b"a*b:c"
    assert is_protected(b"rq:job:1") and is_protected(b"bullrq:sync:paused") and is_protected(b"bullrq:cache-x")
    assert not is_protected(b"bullrq:cache:sync:abc") and not is_protected(b"other:rq:1")


def test_compile_glob_matches_what_redis_scan_match_returns(redis_conn):
    keys = [b"c:a1", b"c:b2", b"c:ab", b"c:a*", b"c:\xff\x00", b"c:[x]", b"c:-", b"c:z", b"d:a1", b"c:a1:deep"]
    for key in keys:
        redis_conn.set(key, 1)
    patterns = ["c:*", "c:a?", "c:[ab]?", "c:[^a]*", "c:[a-b]2", "c:[b-a]2", r"c:a\*", "c:[\\]]*", "c:?\x00", "c:*:*"]
    for pattern in patterns:
        regex = compile_glob(pattern)
        by_redis = set(redis_conn.scan_iter(match=pattern, count=1000))
        assert by_redis == {key for key in keys if regex.fullmatch(key)}, pattern


@pytest.mark.parametrize(
    ("ttl", "idle", "expected"),
    [(-1, 10, "remove"), (-1, 2, "keep"), (5000, 10, "keep"), (-2, None, "gone"), (-1, None, "gone"),
     (-1, ValueError("LFU"), "unchecked")],
)
def test_verdict_removes_only_idle_keys_without_ttl(ttl, idle, expected):
    assert verdict(ttl, idle, max_idle=2) == expected


def test_settings_name_the_bad_variable():
    defaults = CleanupSettings.from_env({})
    assert defaults.namespaces == ("bullrq:cache:*",) and defaults.ai_namespaces == ("bullrq:cache:ai:*",)
    assert (defaults.scan_limit, defaults.batch_delay_ms, defaults.max_idle_seconds) == (10_000, 100, 21600)
    assert (defaults.log_retention_days, defaults.temp_analysis_retention_hours) == (30, 48)
    assert CleanupSettings.from_env({"CACHE_NAMESPACES": "a:*, b:*,a:*"}).namespaces == ("a:*", "b:*")
    with pytest.raises(ConfigError, match="CACHE_SCAN_LIMIT"):
        CleanupSettings.from_env({"CACHE_SCAN_LIMIT": "0"})
    with pytest.raises(ConfigError, match="AI_CACHE_NAMESPACES.*rq:"):
        CleanupSettings.from_env({"AI_CACHE_NAMESPACES": "bullrq:cache:ai:*,rq:job:*"})
    with pytest.raises(ConfigError, match="CACHE_REDIS_URL"):
        CleanupSettings.from_env({"CACHE_REDIS_URL": "http://127.0.0.1:1"})


@pytest.mark.parametrize(
    "data",
    [{"maxKeys": 0}, {"maxKeys": "500"}, {"maxKeys": True}, {"maxKeys": 2.5}, {"maxKeys": 2_000_000},
     {"maxIdleSeconds": 0}, {"batchDelayMs": -1}, {"dryRun": "yes"}, {"namespaces": "rq:*"}],
)
def test_bad_overrides_are_refused_at_enqueue(data):
    for name in ("cache.cleanup", "cache.ai_cleanup"):
        with pytest.raises(InvalidJobError):
            get_task(name).bind(data)
    assert get_task("cache.cleanup").bind({"maxKeys": 500, "dryRun": True}) == {"max_keys": 500, "dry_run": True}


# --- through a real worker ------------------------------------------------------------------------------------


def test_cleanup_removes_only_idle_keys_without_ttl_inside_the_namespace_with_scan(handlers, redis_conn):
    idle = [f"bullrq:cache:sync:idle-{n}" for n in range(150)]
    hot = [f"bullrq:cache:sync:hot-{n}" for n in range(20)]
    with_ttl = [f"bullrq:cache:sync:ttl-{n}" for n in range(20)]
    ai = [f"bullrq:cache:ai:idle-{n}" for n in range(10)]
    outside = ["rq:idle-1", "other:idle", "bullrq:sync:idle", "bullrq:cachex:idle", "bullrq:cache-cleanup:idle"]
    _plant(redis_conn, idle + ai + outside)
    _plant(redis_conn, hot, idle=None)  # in use: never removed
    _plant(redis_conn, with_ttl, ttl=3600)  # left to Redis, idle or not
    assert redis_conn.object("idletime", idle[0]) >= AGED
    handlers.start("cache-cleanup")
    keys_calls, scan_calls, unlink_calls = (_calls(redis_conn, c) for c in ("keys", "scan", "unlink"))

    job = handlers.run("cache.cleanup", {"maxIdleSeconds": IDLE})

    assert job["status"] == "completed", job["error"]
    result = job["result"]
    assert _existing(redis_conn, idle) == set()
    assert _existing(redis_conn, hot + with_ttl + ai + outside) == set(hot + with_ttl + ai + outside)
    assert (result["keys_removed"], result["keys_kept"], result["keys_excluded"]) == (150, 40, 10)
    assert result["keys_scanned"] == 200 and result["keys_without_ttl"] == 170
    assert result["namespaces"][0]["cycle_complete"] and not redis_conn.exists(cursor_key("bullrq:cache:*"))
    assert _calls(redis_conn, "keys") == keys_calls  # never KEYS
    assert _calls(redis_conn, "scan") - scan_calls >= result["scan_calls"] >= 1
    assert _calls(redis_conn, "unlink") > unlink_calls
    memory = result["memory"]
    assert memory["freed"] == memory["used_before"] - memory["used_after"] > 150 * len(VALUE) // 2
    assert result["bytes_removed"] >= 150 * len(VALUE)
    assert job["progress"]["processed"] == result["processed"] == 150 + sum(result["rows_deleted"].values())
    assert job["progress"]["percent"] == 100

    kept_longer = handlers.run("cache.ai_cleanup", {})  # AI entries may stay idle 24 h by default
    assert kept_longer["status"] == "completed", kept_longer["error"]
    assert (kept_longer["result"]["keys_removed"], kept_longer["result"]["keys_kept"]) == (0, 10)
    ai_run = handlers.run("cache.ai_cleanup", {"maxIdleSeconds": IDLE})
    assert ai_run["result"]["keys_removed"] == 10 and ai_run["progress"]["processed"] == 10
    assert _existing(redis_conn, ai) == set()
    assert _existing(redis_conn, hot + with_ttl + outside) == set(hot + with_ttl + outside)
    assert _calls(redis_conn, "keys") == keys_calls


def test_the_scan_cap_holds_and_the_next_run_continues_from_the_saved_cursor(handlers, redis_conn):
    keys = [f"bullrq:cache:bulk:{n}" for n in range(1200)]
    _plant(redis_conn, keys)
    _plant(redis_conn, [f"rq:bulk:{n}" for n in range(300)])
    handlers.start("cache-cleanup")

    data = {"maxKeys": 500, "maxIdleSeconds": IDLE, "batchDelayMs": 20}
    first = handlers.run("cache.cleanup", data)["result"]
    space = first["namespaces"][0]
    assert 300 < first["keys_scanned"] <= 500 and first["keys_removed"] == first["keys_scanned"]
    assert not space["cycle_complete"] and space["cursor_from"] == 0
    assert int(redis_conn.get(cursor_key("bullrq:cache:*"))) == space["cursor_to"] != 0
    assert first["batches"] >= 4 and first["delays"] == first["batches"] - 1 >= 2
    assert len(_existing(redis_conn, keys)) == 1200 - first["keys_removed"]

    removed = first["keys_removed"]
    previous = space
    for _ in range(5):
        run = handlers.run("cache.cleanup", data)["result"]
        space = run["namespaces"][0]
        assert space["cursor_from"] == previous["cursor_to"]  # resumed, not started over
        assert run["keys_scanned"] <= 500
        removed += run["keys_removed"]
        previous = space
        if space["cycle_complete"]:
            break
    assert space["cycle_complete"] and removed == 1200
    assert _existing(redis_conn, keys) == set() and not redis_conn.exists(cursor_key("bullrq:cache:*"))
    assert redis_conn.exists(*[f"rq:bulk:{n}" for n in range(300)]) == 300


def test_keys_are_counted_once_each_although_scan_returns_some_twice_while_unlink_shrinks_the_keyspace(
    handlers, redis_conn
):
    # the shape of the run that reported 5,324 scanned for 5,322 keys: most keys go, so Redis shrinks its table
    # (rehashing) between SCAN calls, and SCAN's guarantee is "at least once"
    idle = [f"bullrq:cache:sync:idle-{n}" for n in range(4900)]
    with_ttl = [f"bullrq:cache:sync:ttl-{n}" for n in range(422)]
    _plant(redis_conn, idle)
    _plant(redis_conn, with_ttl, ttl=3600)
    handlers.start("cache-cleanup")

    job = handlers.run("cache.cleanup", {"maxIdleSeconds": IDLE, "batchDelayMs": 100}, timeout=120)

    assert job["status"] == "completed", job["error"]
    result = job["result"]
    assert _existing(redis_conn, idle) == set() and _existing(redis_conn, with_ttl) == set(with_ttl)
    assert (result["keys_scanned"], result["keys_candidates"], result["keys_removed"]) == (5322, 4900, 4900)
    assert (result["keys_kept"], result["keys_without_ttl"]) == (422, 4900)
    assert result["bytes_removed"] == result["bytes_candidates"] >= 4900 * len(VALUE)
    assert job["progress"]["processed"] == 4900 + sum(result["rows_deleted"].values())


def _seed_rows(conn) -> None:
    conn.execute(
        "INSERT INTO sync_runs (job_id, workspace_id, started_at, ended_at) "
        "SELECT 'old-' || n, 'w', now() - interval '41 days', now() - interval '40 days' "
        "FROM generate_series(1, 12000) AS n"
    )
    conn.execute(
        "INSERT INTO sync_runs (job_id, workspace_id, started_at, ended_at) "
        "VALUES ('recent', 'w', now() - interval '2 days', now() - interval '1 day')"
    )
    conn.execute(
        "INSERT INTO notification_outbox (idempotency_key, channel, recipient, job_id, status, created_at, sent_at) "
        "VALUES ('old-sent', 'email', 'a@example.test', 'j', 'sent', now() - interval '40 days', "
        "        now() - interval '40 days'), "
        "       ('old-failed', 'email', 'a@example.test', 'j', 'failed', now() - interval '35 days', NULL), "
        "       ('old-sending', 'email', 'a@example.test', 'j', 'sending', now() - interval '40 days', NULL), "
        "       ('late-sent', 'email', 'a@example.test', 'j', 'sent', now() - interval '40 days', "
        "        now() - interval '2 days'), "
        "       ('recent', 'webhook', 'http://127.0.0.1/', 'j', 'sent', now() - interval '1 day', now())"
    )
    conn.execute("INSERT INTO documents (id, filename, content) VALUES ('d1', 'a.pdf', '\\x00')")
    conn.execute(
        "INSERT INTO document_analyses (document_id, analysis_type, provider, result, temporary, created_at) "
        "VALUES ('d1', 'preview', 'local', '{}', true, now() - interval '49 hours'), "
        "       ('d1', 'summary', 'local', '{}', true, now() - interval '47 hours'), "
        "       ('d1', 'preview', 'local', '{}', false, now() - interval '90 days')"
    )


def _remaining(conn) -> dict:
    return {
        "sync_runs": [r["job_id"] for r in conn.execute("SELECT job_id FROM sync_runs WHERE job_id NOT LIKE 'old-%'")],
        "sync_runs_old": conn.execute("SELECT count(*) AS n FROM sync_runs WHERE job_id LIKE 'old-%'").fetchone()["n"],
        "notification_outbox": sorted(
            r["idempotency_key"] for r in conn.execute("SELECT idempotency_key FROM notification_outbox")
        ),
        "document_analyses": sorted(
            (r["analysis_type"], r["temporary"])
            for r in conn.execute("SELECT analysis_type, temporary FROM document_analyses")
        ),
    }


def test_dry_run_deletes_nothing_then_the_real_run_deletes_rows_past_retention(handlers, redis_conn):
    idle = [f"bullrq:cache:sync:idle-{n}" for n in range(120)]
    _plant(redis_conn, idle)
    with handlers.db() as conn:
        _seed_rows(conn)
        before = _remaining(conn)
    handlers.start("cache-cleanup")

    dry = handlers.run("cache.cleanup", {"dryRun": True, "maxIdleSeconds": IDLE, "maxKeys": 100})
    assert dry["status"] == "completed", dry["error"]
    result = dry["result"]
    assert result["dry_run"] and result["keys_removed"] == 0 and result["keys_candidates"] == result["keys_scanned"]
    assert 0 < result["keys_scanned"] <= 100 and result["bytes_candidates"] >= result["keys_candidates"] * len(VALUE)
    assert result["bytes_removed"] == 0 and result["memory"]["freed"] == 0  # nothing removed, nothing freed
    assert all(ns["bytes_removed"] == 0 for ns in result["namespaces"])
    assert result["rows_past_retention"] == {"sync_runs": 12000, "notification_outbox": 2, "document_analyses": 1}
    assert result["rows_deleted"] == {"sync_runs": 0, "notification_outbox": 0, "document_analyses": 0}
    assert dry["progress"]["processed"] == 0
    assert _existing(redis_conn, idle) == set(idle) and not redis_conn.exists(cursor_key("bullrq:cache:*"))
    with handlers.db() as conn:
        assert _remaining(conn) == before

    real = handlers.run("cache.cleanup", {"maxIdleSeconds": IDLE}, timeout=60)
    assert real["status"] == "completed", real["error"]
    result = real["result"]
    assert result["rows_deleted"] == {"sync_runs": 12000, "notification_outbox": 2, "document_analyses": 1}
    assert result["db_statements"] >= 3 + 2  # 12,000 rows go 5,000 per DELETE
    assert result["keys_removed"] == 120 and _existing(redis_conn, idle) == set()
    assert real["progress"]["processed"] == result["processed"] == 120 + 12003
    with handlers.db() as conn:
        assert _remaining(conn) == {
            "sync_runs": ["recent"],
            "sync_runs_old": 0,
            "notification_outbox": ["late-sent", "old-sending", "recent"],
            "document_analyses": [("preview", False), ("summary", True)],
        }

    again = handlers.run("cache.cleanup", {"maxIdleSeconds": IDLE})  # idempotent: nothing left to do
    assert again["status"] == "completed", again["error"]
    assert again["result"]["processed"] == 0


def test_an_unreachable_cache_redis_is_retried_then_fails(handlers, monkeypatch):
    monkeypatch.setenv("CACHE_REDIS_URL", f"redis://127.0.0.1:{_free_port()}/0")
    handlers.start("cache-cleanup")

    job = handlers.run("cache.ai_cleanup", {}, RETRY_FAST)

    assert job["status"] == "failed"
    assert job["attempt"] == 2  # transient: the queue policy retried it
    assert "cache Redis unavailable" in job["error"]


def test_a_namespace_reaching_queue_keys_fails_at_once_naming_the_variable(handlers, redis_conn, monkeypatch):
    monkeypatch.setenv("CACHE_NAMESPACES", "bullrq:cache:*,bullrq:*")
    _plant(redis_conn, ["bullrq:sync:paused"])
    handlers.start("cache-cleanup")

    job = handlers.run("cache.cleanup", {"maxIdleSeconds": 1}, RETRY_FAST)

    assert job["status"] == "failed" and job["attempt"] == 1  # permanent: no retry
    assert "CACHE_NAMESPACES" in job["error"] and "bullrq:*" in job["error"]
    assert redis_conn.exists("bullrq:sync:paused")
