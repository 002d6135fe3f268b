"""The harvest queue (workers/harvest.py) end to end: a real worker, the test's PostgreSQL, and feeds, a JSON API
and an HTML page served by a loopback HTTP server; plus unit tests of the parsers and the content hash."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime

import pytest
from psycopg.types.json import Jsonb

from app.errors import ConfigError, InvalidJobError, PermanentFailure, ServiceUnavailableError
from app.runtime.control import run_now
from app.runtime.enqueue import enqueue
from app.tasks import get_task, queue_keys
from queues import JOB_KEY_PREFIX, job_key
from tests.waits import status, stays
from workers._harvest_fetch import HarvestSettings
from workers._harvest_html import Selector, html_to_text, page_text
from workers._harvest_parse import content_hash, normalise, parse, parse_date, parse_feed, parse_html, parse_json
from workers.harvest import Outcome, _check_all_failed

pytest_plugins = ["tests.worker_processes", "tests.handler_runs", "tests.http_service"]

#: quick retries, so a retried job ends within a second or two
RETRY = {"attempts": 3, "backoff": {"type": "fixed", "delay": 1}}
HARVEST_ENV = ("HARVEST_MAX_BYTES", "HARVEST_MAX_ITEMS", "HARVEST_TIMEOUT", "HARVEST_CONCURRENCY",
               "HARVEST_EMBED_AFTER", "EMBEDDINGS_PROVIDER", "EMBEDDINGS_MODEL")

RSS = """<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0"><channel><title>Loopback News</title><link>http://127.0.0.1/</link><description>d</description>
  <item>
    <title>Harvest   season opens</title>
    <link>http://127.0.0.1/news/1</link><guid>news-1</guid>
    <pubDate>Mon, 06 Jan 2025 10:00:00 GMT</pubDate>
    <description>&lt;p&gt;Farmers &lt;b&gt;started&lt;/b&gt; early.&lt;/p&gt;
      &lt;script&gt;track()&lt;/script&gt;</description>
  </item>
  <item>
    <title>Rain expected</title><link>http://127.0.0.1/news/2</link><guid>news-2</guid>
    <description>Light rain on Tuesday.</description>
  </item>
</channel></rss>
"""

ATOM = """<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>Atom Blog</title><id>urn:blog</id>
  <updated>2025-02-03T04:05:06Z</updated>
  <entry>
    <title type="html">&lt;em&gt;Release&lt;/em&gt; 2.0</title><id>urn:blog:1</id>
    <link href="/posts/release-2"/><updated>2025-02-03T04:05:06Z</updated>
    <content type="html">&lt;h2&gt;What is new&lt;/h2&gt;
      &lt;ul&gt;&lt;li&gt;Faster&lt;/li&gt;&lt;li&gt;Smaller&lt;/li&gt;&lt;/ul&gt;</content>
  </entry>
</feed>
"""

API = {"data": {"posts": [
    {"headline": "API post", "body": "Served as JSON.", "link": "http://127.0.0.1/api/1",
     "date": "2025-03-01T12:00:00Z", "key": 41},
    # the RSS item again, with other spacing and case: the same content, stored once
    {"headline": "HARVEST season opens", "body": "farmers   started\nearly.", "date": 1735000000},
]}}
API_CONFIG = {"itemsPath": "data.posts",
              "fields": {"title": "headline", "content": "body", "url": "link", "published": "date", "id": "key"}}

PAGE = """<!doctype html><html lang="en"><head><title>About the farm</title>
<meta name="description" content="Who we are"><style>body { color: red }</style>
<script>var secret = "not text";</script></head>
<body><nav>Home | Contact</nav><main><h1>About us</h1><p>We grow apples.<p>Since 1901.</main>
<footer>Copyright</footer></body></html>
"""


@pytest.fixture(autouse=True)
def no_harvest_env(monkeypatch):
    """Start every test from the defaults, whatever the machine's environment holds."""
    for name in HARVEST_ENV:
        monkeypatch.delenv(name, raising=False)


# -- helpers -------------------------------------------------------------------------------------------------------

def _add_source(conn, name: str, url: str, kind: str, config: dict | None = None, enabled: bool = True) -> int:
    return conn.execute(
        "INSERT INTO harvest_sources (name, url, kind, config, enabled) VALUES (%s, %s, %s, %s, %s) RETURNING id",
        (name, url, kind, Jsonb(config or {}), enabled),
    ).fetchone()["id"]


def _source(conn, source_id: int) -> dict:
    return conn.execute("SELECT * FROM harvest_sources WHERE id = %s", (source_id,)).fetchone()


def _content(conn) -> list[dict]:
    return conn.execute("SELECT * FROM harvested_content ORDER BY id").fetchall()


def _closed_port() -> int:
    """A loopback port nothing listens on (connections are refused at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _serve_all_kinds(http_service) -> None:
    http_service.route("GET", "/rss.xml", (200, {"Content-Type": "application/rss+xml"}, RSS))
    http_service.route("GET", "/atom.xml", (200, {"Content-Type": "application/atom+xml"}, ATOM))
    http_service.route("GET", "/api/posts", API)
    http_service.route("GET", "/about.html", (200, {"Content-Type": "text/html; charset=utf-8"}, PAGE))


def _add_all_kinds(conn, base: str) -> dict[str, int]:
    return {
        "rss": _add_source(conn, "rss", f"{base}/rss.xml", "feed"),
        "atom": _add_source(conn, "atom", f"{base}/atom.xml", "feed"),
        "api": _add_source(conn, "api", f"{base}/api/posts", "json", API_CONFIG),
        "page": _add_source(conn, "page", f"{base}/about.html", "html"),
    }


# -- end to end through a real worker ------------------------------------------------------------------------------

def test_run_harvests_every_kind_and_stores_each_item_once(handlers, http_service, monkeypatch):
    monkeypatch.setenv("HARVEST_CONCURRENCY", "1")  # one source after the other: the RSS source stores first
    _serve_all_kinds(http_service)
    with handlers.db() as conn:
        ids = _add_all_kinds(conn, http_service.url)
        _add_source(conn, "off", f"{http_service.url}/off.xml", "feed", enabled=False)
    handlers.start("harvest")

    job = handlers.run("harvest.run")
    assert job["status"] == "completed", job["error"]
    result = job["result"]
    assert (result["sources"], result["ok"], result["failed"]) == (4, 4, 0)
    assert (result["new"], result["duplicates"]) == (5, 1)  # the JSON API repeats the RSS item
    assert job["progress"]["processed"] == 4 and job["progress"]["failed"] == 0
    assert not http_service.received("GET", "/off.xml")  # disabled sources are left alone

    with handlers.db() as conn:
        rows = _content(conn)
        by_title = {row["title"]: row for row in rows}
        assert sorted(by_title) == ["API post", "About the farm", "Harvest season opens", "Rain expected",
                                    "Release 2.0"]
        news = by_title["Harvest season opens"]
        assert news["content"] == "Farmers started early."  # tags and the script are gone: plain text
        assert news["content_hash"] == content_hash("harvest season opens", "FARMERS started early.")
        assert news["published_at"] == datetime(2025, 1, 6, 10, tzinfo=UTC)
        assert news["source_id"] == ids["rss"]
        release = by_title["Release 2.0"]
        assert (release["source_id"], release["content"]) == (ids["atom"], "What is new\nFaster\nSmaller")
        assert release["url"] == f"{http_service.url}/posts/release-2"  # relative link resolved against the feed
        api = by_title["API post"]
        assert (api["url"], api["metadata"]) == ("http://127.0.0.1/api/1", {"id": "41"})
        assert api["published_at"] == datetime(2025, 3, 1, 12, tzinfo=UTC)
        page = by_title["About the farm"]
        assert page["content"] == "About us\nWe grow apples.\nSince 1901."
        assert page["metadata"] == {"description": "Who we are", "lang": "en"}
        assert all(_source(conn, i)["last_status"] == "ok" for i in ids.values())

    again = handlers.run("harvest.run")
    assert again["status"] == "completed", again["error"]
    assert (again["result"]["new"], again["result"]["duplicates"]) == (0, 6)
    with handlers.db() as conn:
        assert len(_content(conn)) == 5


def _embedding_jobs(redis_conn) -> list[str]:
    """The embeddings.generate jobs in Redis."""
    ids = [k.decode().removeprefix(JOB_KEY_PREFIX) for k in redis_conn.scan_iter(match=job_key("*"))]
    return [i for i in ids if (redis_conn.hget(job_key(i), "description") or b"").startswith(b"embeddings.generate(")]


def test_run_queues_embeddings_that_wait_until_the_harvest_completed(handlers, http_service):
    http_service.route("GET", "/rss.xml", (200, {"Content-Type": "application/rss+xml"}, RSS))
    with handlers.db() as conn:
        _add_source(conn, "rss", f"{http_service.url}/rss.xml", "feed")
    handlers.start("harvest", "embeddings")

    harvest = handlers.run("harvest.run")
    assert harvest["status"] == "completed", harvest["error"]
    assert harvest["result"]["new"] == 2
    embed_id = harvest["result"]["embeddings_job_id"]
    assert _embedding_jobs(handlers.redis) == [embed_id]
    embed = handlers.wait(embed_id)
    assert embed["status"] == "completed", embed["error"]
    assert embed["depends_on"] == [harvest["id"]] and embed["data"] == {"limit": 10_000}
    assert handlers.redis.hget(job_key(embed_id), "on_parent_failure") == b"cancel"
    # created while the harvest ran, held deferred, and queued in the very step that completed the harvest
    assert embed["created_at"] < harvest["ended_at"] == embed["enqueued_at"] <= embed["started_at"]
    assert (embed["result"]["embedded"], embed["result"]["remaining"]) == (2, 0)
    with handlers.db() as conn:
        assert conn.execute("SELECT count(*) AS n FROM content_embeddings").fetchone()["n"] == 2

    again = handlers.run("harvest.run")  # nothing new stored: nothing to embed
    assert again["status"] == "completed", again["error"]
    assert (again["result"]["new"], again["result"]["embeddings_job_id"]) == (0, None)
    assert _embedding_jobs(handlers.redis) == [embed_id]


def test_the_embeddings_job_is_deferred_while_the_harvest_has_not_completed(handlers, http_service):
    http_service.route("GET", "/rss.xml", (200, {"Content-Type": "application/rss+xml"}, RSS))
    with handlers.db() as conn:
        _add_source(conn, "rss", f"{http_service.url}/rss.xml", "feed")
    handlers.start("harvest", "embeddings")
    # as if an earlier attempt of this harvest job had queued the embedding and died before it ended: the job waits
    # for its retry (delayed), and its embedding, with the handler's own options, waits for it
    harvest_id = handlers.enqueue("harvest.run", None, {"delay": 3600})
    embed = enqueue(handlers.redis, "embeddings.generate", {"limit": 10_000},
                    {"dependsOn": [harvest_id], "onParentFailure": "cancel", "jobId": f"harvest-embed:{harvest_id}"})
    stays(lambda: status(handlers.redis, embed.id) == "deferred", 1.5)  # the idle embeddings worker leaves it
    assert handlers.redis.zscore(queue_keys("embeddings").deferred, embed.id) is not None
    run_now(handlers.redis, harvest_id)  # the retry is due

    harvest = handlers.wait(harvest_id)
    assert harvest["status"] == "completed", harvest["error"]
    assert harvest["result"]["embeddings_job_id"] == embed.id  # the retry found it queued: not a second one
    assert _embedding_jobs(handlers.redis) == [embed.id]
    assert handlers.wait(embed.id)["status"] == "completed"


def test_embed_after_off_queues_nothing(handlers, http_service, monkeypatch):
    monkeypatch.setenv("HARVEST_EMBED_AFTER", "0")
    http_service.route("GET", "/rss.xml", (200, {"Content-Type": "application/rss+xml"}, RSS))
    with handlers.db() as conn:
        _add_source(conn, "rss", f"{http_service.url}/rss.xml", "feed")
    handlers.start("harvest")

    harvest = handlers.run("harvest.run")
    assert harvest["status"] == "completed", harvest["error"]
    assert (harvest["result"]["new"], harvest["result"]["embeddings_job_id"]) == (2, None)
    keys = queue_keys("embeddings")
    assert _embedding_jobs(handlers.redis) == []
    assert handlers.redis.llen(keys.queue) == handlers.redis.zcard(keys.deferred) == 0


def test_etag_is_sent_back_and_a_304_stores_nothing(handlers, http_service):
    answers = {"etag": '"v1"', "body": RSS}

    def feed(request):
        if request.headers.get("if-none-match") == answers["etag"]:
            return 304, {"ETag": answers["etag"]}, b""
        return 200, {"ETag": answers["etag"], "Content-Type": "application/rss+xml"}, answers["body"]

    http_service.route("GET", "/feed", feed)
    with handlers.db() as conn:
        source_id = _add_source(conn, "etag feed", f"{http_service.url}/feed", "feed")
    handlers.start("harvest")

    first = handlers.run("harvest.source", {"sourceId": source_id})
    assert first["status"] == "completed", first["error"]
    assert (first["result"]["status"], first["result"]["new"]) == ("ok", 2)
    assert "if-none-match" not in http_service.received("GET", "/feed")[0].headers

    second = handlers.run("harvest.source", {"sourceId": source_id})
    assert second["status"] == "completed", second["error"]
    assert http_service.received("GET", "/feed")[1].headers["if-none-match"] == '"v1"'
    assert (second["result"]["status"], second["result"]["new"], second["result"]["duplicates"]) == (
        "not-modified", 0, 0)
    with handlers.db() as conn:
        assert len(_content(conn)) == 2
        source = _source(conn, source_id)
        assert (source["last_status"], source["etag"], source["last_error"]) == ("not-modified", '"v1"', None)

    answers.update(etag='"v2"', body=RSS.replace("Rain expected", "Sun expected"))
    third = handlers.run("harvest.source", {"sourceId": source_id})
    assert third["status"] == "completed", third["error"]
    assert (third["result"]["new"], third["result"]["duplicates"]) == (1, 1)
    with handlers.db() as conn:
        assert _source(conn, source_id)["etag"] == '"v2"'
        assert len(_content(conn)) == 3


def test_last_modified_is_sent_back_and_a_304_stores_nothing(handlers, http_service):
    stamp = "Wed, 01 Jan 2025 00:00:00 GMT"

    def api(request):
        if request.headers.get("if-modified-since") == stamp:
            return 304, {}, b""
        return 200, {"Last-Modified": stamp, "Content-Type": "application/json"}, json.dumps(API)

    http_service.route("GET", "/api", api)
    with handlers.db() as conn:
        source_id = _add_source(conn, "dated api", f"{http_service.url}/api", "json", API_CONFIG)
    handlers.start("harvest")

    first = handlers.run("harvest.source", {"sourceId": source_id})
    assert first["status"] == "completed", first["error"]
    assert first["result"]["new"] == 2
    assert first["progress"]["processed"] == 2
    with handlers.db() as conn:
        assert _source(conn, source_id)["last_modified"] == stamp

    second = handlers.run("harvest.source", {"sourceId": source_id})
    assert second["status"] == "completed", second["error"]
    assert http_service.received("GET", "/api")[1].headers["if-modified-since"] == stamp
    assert second["result"]["status"] == "not-modified"
    with handlers.db() as conn:
        assert len(_content(conn)) == 2
        assert _source(conn, source_id)["last_status"] == "not-modified"


def test_failing_sources_do_not_stop_the_others(handlers, http_service, monkeypatch):
    monkeypatch.setenv("HARVEST_MAX_BYTES", "4096")
    http_service.route("GET", "/rss.xml", RSS)
    http_service.route("GET", "/broken", (500, {}, "internal error"))
    http_service.route("GET", "/malformed.xml", (200, {"Content-Type": "application/rss+xml"},
                                                 "<rss version='2.0'><channel><item><title>x</item></rss>"))
    http_service.route("GET", "/huge.html", (200, {"Content-Type": "text/html"}, "<p>" + "x" * 10_000 + "</p>"))
    http_service.route("GET", "/gone", (404, {}, "no such feed"))
    with handlers.db() as conn:
        good = _add_source(conn, "good", f"{http_service.url}/rss.xml", "feed")
        failing = {
            "HTTP 500": _add_source(conn, "broken", f"{http_service.url}/broken", "feed"),
            "ConnectError": _add_source(conn, "offline", f"http://127.0.0.1:{_closed_port()}/feed", "feed"),
            "malformed feed: XML error at line 1": _add_source(conn, "malformed", f"{http_service.url}/malformed.xml",
                                                               "feed"),
            "over HARVEST_MAX_BYTES": _add_source(conn, "huge", f"{http_service.url}/huge.html", "html"),
            "HTTP 404": _add_source(conn, "gone", f"{http_service.url}/gone", "json"),
        }
    handlers.start("harvest")

    job = handlers.run("harvest.run", options=RETRY)
    assert job["status"] == "completed", job["error"]
    assert job["attempt"] == 1
    result = job["result"]
    assert (result["sources"], result["ok"], result["failed"], result["new"]) == (6, 1, 5, 2)
    assert job["progress"]["processed"] == 1 and job["progress"]["failed"] == 5
    by_id = {entry["source_id"]: entry for entry in result["by_source"]}
    assert by_id[good]["status"] == "ok"
    with handlers.db() as conn:
        assert _source(conn, good)["last_status"] == "ok"
        assert len(_content(conn)) == 2
        for expected, source_id in failing.items():
            source = _source(conn, source_id)
            assert source["last_status"] == "error"
            assert source["last_error"].startswith(f"harvest source {source_id} ("), source["last_error"]
            assert expected in source["last_error"], source["last_error"]
            assert by_id[source_id]["status"] == "error" and expected in by_id[source_id]["error"]
            assert source["last_fetched_at"] is not None
    assert by_id[failing["HTTP 500"]]["transient"] is True
    assert by_id[failing["HTTP 404"]]["transient"] is False


def test_run_is_retried_only_when_every_source_failed_transiently(handlers, http_service):
    http_service.route("GET", "/down", (503, {}, "maintenance"))
    with handlers.db() as conn:
        down = _add_source(conn, "down", f"{http_service.url}/down", "feed")
    handlers.start("harvest")

    job = handlers.run("harvest.run", options={"attempts": 2, "backoff": {"type": "fixed", "delay": 1}})
    assert job["status"] == "failed"
    assert "ServiceUnavailableError" in job["error"] and "failed transiently" in job["error"]
    assert len(http_service.received("GET", "/down")) == 2  # the queue retried the whole run
    with handlers.db() as conn:
        assert _source(conn, down)["last_error"] == f"harvest source {down} (down): HTTP 503"
        # a failure that retrying cannot fix: the run completes and reports it
        _add_source(conn, "not json", f"{http_service.url}/text", "json")
    http_service.route("GET", "/text", (200, {"Content-Type": "application/json"}, "{not json"))

    mixed = handlers.run("harvest.run", options={"attempts": 2, "backoff": {"type": "fixed", "delay": 1}})
    assert mixed["status"] == "completed", mixed["error"]
    assert (mixed["result"]["failed"], mixed["attempt"]) == (2, 1)


def test_harvest_source_fails_for_good_on_unknown_disabled_or_malformed(handlers, http_service):
    http_service.route("GET", "/bad.json", (200, {"Content-Type": "application/json"}, '{"data": [1, 2,'))
    with handlers.db() as conn:
        disabled = _add_source(conn, "paused feed", f"{http_service.url}/paused", "feed", enabled=False)
        malformed = _add_source(conn, "bad api", f"{http_service.url}/bad.json", "json")
    handlers.start("harvest")

    unknown = handlers.run("harvest.source", {"sourceId": 987654}, options=RETRY)
    assert unknown["status"] == "failed" and unknown["attempt"] == 1  # no retry
    assert "PermanentFailure" in unknown["error"] and "harvest source 987654 does not exist" in unknown["error"]

    off = handlers.run("harvest.source", {"sourceId": disabled}, options=RETRY)
    assert off["status"] == "failed" and off["attempt"] == 1
    assert f"harvest source {disabled} (paused feed) is disabled" in off["error"]
    assert not http_service.received("GET", "/paused")

    bad = handlers.run("harvest.source", {"sourceId": malformed}, options=RETRY)
    assert bad["status"] == "failed" and bad["attempt"] == 1
    assert f"harvest source {malformed} (bad api): malformed JSON" in bad["error"]
    assert len(http_service.received("GET", "/bad.json")) == 1
    with handlers.db() as conn:
        source = _source(conn, malformed)
        assert source["last_status"] == "error" and "malformed JSON" in source["last_error"]

    for data in ({"sourceId": 0}, {"sourceId": "7"}, {"sourceId": True}, {}, {"sourceId": 1, "other": 2}):
        with pytest.raises(InvalidJobError):
            handlers.enqueue("harvest.source", data)


def test_harvest_source_retries_a_transient_failure(handlers, http_service):
    calls = []

    def flaky(request):
        calls.append(request)
        return (503, {}, "busy") if len(calls) == 1 else (200, {"Content-Type": "text/html"}, PAGE)

    http_service.route("GET", "/page", flaky)
    with handlers.db() as conn:
        source_id = _add_source(conn, "flaky page", f"{http_service.url}/page", "html")
    handlers.start("harvest")

    job = handlers.run("harvest.source", {"sourceId": source_id}, options=RETRY)
    assert job["status"] == "completed", job["error"]
    assert job["attempt"] == 2 and job["result"]["new"] == 1
    with handlers.db() as conn:
        source = _source(conn, source_id)
        assert (source["last_status"], source["last_error"]) == ("ok", None)  # the success replaced the error
        assert [row["title"] for row in _content(conn)] == ["About the farm"]


# -- unit tests: hashing, parsers, settings ------------------------------------------------------------------------

def test_normalise_collapses_whitespace_and_case():
    assert normalise("  Hello\n\tWORLD  ") == "hello world"
    assert normalise("ﬁne\u00a0print") == "fine print"  # NFKC: ligature and no-break space
    assert normalise(None) == ""


def test_content_hash_ignores_spacing_and_case_but_not_words():
    same = content_hash("Big News", "The  text\nhere.")
    assert same == content_hash("big   news", "the text here.")
    assert len(same) == 64
    assert same != content_hash("Big News", "The text there.")
    assert same != content_hash("Other", "The text here.")
    assert content_hash("a b", "") != content_hash("a", "b")  # title and text stay apart


def test_parse_feed_rss_and_atom_give_plain_text():
    rss = parse_feed(RSS.encode(), max_items=10)
    assert [(i.title, i.content) for i in rss.items] == [
        ("Harvest season opens", "Farmers started early."), ("Rain expected", "Light rain on Tuesday.")]
    assert rss.items[0].metadata == {"guid": "news-1", "feed": "Loopback News"}
    assert rss.items[1].published_at is None
    atom = parse_feed(ATOM.encode(), max_items=10, url="http://127.0.0.1:9/blog/atom.xml")
    (entry,) = atom.items
    assert (entry.title, entry.url) == ("Release 2.0", "http://127.0.0.1:9/posts/release-2")
    assert entry.published_at == datetime(2025, 2, 3, 4, 5, 6, tzinfo=UTC)


def test_parse_feed_caps_items_and_skips_empty_entries():
    items = "".join(f"<item><title>t{n}</title></item>" for n in range(5)) + "<item><link>http://x</link></item>"
    parsed = parse_feed(f"<rss version='2.0'><channel>{items}</channel></rss>".encode(), max_items=3)
    assert [i.title for i in parsed.items] == ["t0", "t1", "t2"] and parsed.truncated == 3
    everything = parse_feed(f"<rss version='2.0'><channel>{items}</channel></rss>".encode(), max_items=10)
    assert (len(everything.items), everything.skipped) == (5, 1)
    assert everything.items[0].content == ""  # a headline-only entry keeps its title, no invented body


@pytest.mark.parametrize("body, message", [
    (b"<rss version='2.0'><channel><item></chanel></rss>", "malformed feed: XML error at line 1, column 36: mismatch"),
    (b'<?xml version="1.0"?>\n<rss>\n<channel><item></chanel></rss>', "at line 3, column 17: mismatched tag"),
    (b"<html><body>hello</body></html>", "not an RSS or Atom feed"),
    (b"/etc/passwd", "malformed feed"),  # bytes are parsed, never opened as a file name
    (b"http://127.0.0.1:9/feed", "malformed feed"),  # nor fetched as a URL
])
def test_parse_feed_rejects_what_is_not_a_well_formed_feed(body, message):
    with pytest.raises(PermanentFailure, match=message):
        parse_feed(body, max_items=10)


def test_parse_feed_tolerates_html_entities_in_rss():
    body = b"<rss version='2.0'><channel><item><title>A&nbsp;B</title></item></channel></rss>"
    assert parse_feed(body, max_items=5).items[0].title == "A B"


def test_parse_json_paths_fields_and_dates():
    parsed = parse_json(json.dumps(API).encode(), API_CONFIG, max_items=10)
    assert [(i.title, i.content) for i in parsed.items] == [
        ("API post", "Served as JSON."), ("HARVEST season opens", "farmers started\nearly.")]
    assert parsed.items[1].published_at == datetime.fromtimestamp(1735000000, UTC)
    defaults = parse_json(b'[{"title": "t", "content": "<b>c</b>", "url": "http://u", "published": "x"}, 7, {}]',
                          {"contentFormat": "html"}, max_items=10)
    assert [(i.title, i.content, i.url, i.published_at) for i in defaults.items] == [("t", "c", "http://u", None)]
    assert defaults.skipped == 2
    nested = parse_json(b'{"pages": [{"entries": [{"title": "deep"}]}]}', {"itemsPath": "pages.0.entries"},
                        max_items=10)
    assert nested.items[0].title == "deep"


@pytest.mark.parametrize("body, config, message", [
    (b"{oops", {}, "malformed JSON"),
    (b'{"items": []}', {}, "no list of items at the top level"),
    (b'{"data": {"x": []}}', {"itemsPath": "data.items"}, "config.itemsPath 'data.items': no 'items' at data"),
    (b'{"data": 3}', {"itemsPath": "data"}, "found a number"),
    (b"[]", {"fields": {"body": "text"}}, "config.fields.body is not a field"),
    (b"[]", {"fields": {"title": 3}}, "config.fields.title must be a dotted path"),
    (b"[]", {"contentFormat": "markdown"}, "config.contentFormat"),
])
def test_parse_json_explains_what_does_not_fit(body, config, message):
    with pytest.raises(PermanentFailure, match=message):
        parse_json(body, config, max_items=10)


def test_parse_html_takes_title_and_main_text():
    (item,) = parse_html(PAGE.encode(), {}, url="http://127.0.0.1/about").items
    assert (item.title, item.content) == ("About the farm", "About us\nWe grow apples.\nSince 1901.")
    no_main = "<html><body><nav>menu</nav><div>Body <i>text</i></div><aside>ads</aside></body></html>"
    assert page_text(no_main).text == "Body text"
    articles = "<body><header>Site</header><article>One</article><p>noise</p><article>Two</article></body>"
    assert page_text(articles).text == "One\nTwo"
    assert page_text("<body><h1>Only a heading</h1></body>").title == "Only a heading"


def test_parse_html_selector_and_charset():
    markup = '<div class="post wide">First</div><div class="ad">Buy</div><p id="x">Second</p>'
    assert page_text(markup, Selector.parse(".post")).text == "First"
    assert page_text(markup, Selector.parse("p#x")).text == "Second"
    assert page_text(markup, Selector.parse("div")).text == "First\nBuy"
    with pytest.raises(PermanentFailure, match="no element of the page matches the selector span.post"):
        page_text(markup, Selector.parse("span.post"))
    with pytest.raises(PermanentFailure, match="not a simple rule"):
        parse_html(b"<p>x</p>", {"selector": "div > p"}, url="")
    latin = "<html><head><title>Café</title></head><body>Olá</body></html>".encode("latin-1")
    (item,) = parse_html(latin, {}, url="", content_type="text/html; charset=ISO-8859-1").items
    assert (item.title, item.content) == ("Café", "Olá")
    meta = b'<meta charset="iso-8859-1"><title>Caf\xe9</title>'
    assert parse_html(meta, {}, url="").items[0].title == "Café"


def test_html_to_text_drops_scripts_and_styles():
    markup = ("<style>p{}</style><p>One&amp;two</p><script>alert(1)</script><ul><li>a<li>b</ul>"
              "<svg><title>icon</title></svg>")
    assert html_to_text(markup) == "One&two\na\nb"


def test_parse_rejects_unknown_kind_and_non_object_config():
    with pytest.raises(PermanentFailure, match="unknown source kind 'csv'"):
        parse("csv", b"", config={}, max_items=1, url="")
    with pytest.raises(PermanentFailure, match="config must be a JSON object"):
        parse("json", b"[]", config=[], max_items=1, url="")


def test_parse_date_forms():
    assert parse_date("2025-01-02T03:04:05+02:00") == datetime(2025, 1, 2, 1, 4, 5, tzinfo=UTC)
    assert parse_date("2025-01-02") == datetime(2025, 1, 2, tzinfo=UTC)
    assert parse_date("Thu, 02 Jan 2025 03:04:05 GMT") == datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_date(1735787045) == parse_date(1735787045000) == datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_date("soon") is parse_date(True) is parse_date(None) is parse_date({"a": 1}) is None


def test_settings_from_env():
    assert HarvestSettings.from_env({}) == HarvestSettings()
    custom = HarvestSettings.from_env({"HARVEST_MAX_BYTES": "2048", "HARVEST_MAX_ITEMS": "10",
                                       "HARVEST_TIMEOUT": "2.5", "HARVEST_CONCURRENCY": "1"})
    assert (custom.max_bytes, custom.max_items, custom.timeout, custom.concurrency) == (2048, 10, 2.5, 1)
    assert custom.embed_after is True and HarvestSettings.from_env({"HARVEST_EMBED_AFTER": "0"}).embed_after is False
    for name, value in (("HARVEST_MAX_BYTES", "12"), ("HARVEST_MAX_ITEMS", "lots"), ("HARVEST_CONCURRENCY", "99"),
                        ("HARVEST_EMBED_AFTER", "maybe")):
        with pytest.raises(ConfigError, match=name):
            HarvestSettings.from_env({name: value})


def test_source_id_validation():
    harvest_source = get_task("harvest.source")
    assert harvest_source.bind({"sourceId": 12}) == {"source_id": 12}
    for bad in (0, -3, "12", 1.5, None, True, 2**63):
        with pytest.raises(InvalidJobError, match="sourceId must be a positive whole number"):
            harvest_source.bind({"sourceId": bad})
    assert get_task("harvest.run").bind({}) == {}


def test_run_fails_only_when_every_failure_is_transient():
    def outcome(status: str, transient: bool = False) -> Outcome:
        return Outcome(1, "s", status, error="boom" if status == "error" else None, transient=transient)

    with pytest.raises(ServiceUnavailableError, match="all 2 harvest sources failed transiently"):
        _check_all_failed([outcome("error", True), outcome("error", True)])
    _check_all_failed([outcome("error", True), outcome("error", False)])  # retrying cannot fix them all
    _check_all_failed([outcome("error", True), outcome("ok")])
    _check_all_failed([])  # no sources: nothing to retry
