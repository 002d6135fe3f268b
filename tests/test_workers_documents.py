"""The documents queue (workers/documents.py) end to end: a real worker forking a child per job, the test's
PostgreSQL, real PDFs made here with fpdf2 and pypdf, and an OpenAI-compatible chat server played by a loopback
HTTP server; plus unit tests of the PDF reading, the extractive analysis, the answer parsing and the settings."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import pytest
from fpdf import FPDF

from app.errors import ConfigError, InvalidJobError
from app.tasks import get_task
from workers._document_extractive import analyse, guess_language, keywords, split_sentences
from workers._document_pdf import Encrypted, NotReadable, TooLong, extract_text, open_pdf
from workers._document_providers import parse_analysis
from workers._document_settings import DocumentSettings
from workers.documents import NO_TEXT_NOTE, store_document

pytest_plugins = ["tests.worker_processes", "tests.handler_runs", "tests.http_service"]

API_KEY = "sk-test-SECRET-0123456789"
#: quick retries, so a retried job ends within a second or two
RETRY = {"attempts": 3, "backoff": {"type": "fixed", "delay": 1}}
DOCUMENTS_ENV = ("DOCUMENTS_MAX_BYTES", "DOCUMENTS_MAX_PAGES", "DOCUMENTS_MAX_TEXT_CHARS",
                 "DOCUMENTS_ANALYSIS_PROVIDER", "DOCUMENTS_ANALYSIS_MAX_CHARS", "DOCUMENTS_ANALYSIS_TIMEOUT",
                 "OPENAI_API_URL", "OPENAI_API_KEY", "OPENAI_MODEL")
PAGES = [
    "Solar Farms\nSolar panels convert sunlight into electricity for the whole town. Solar farms need open land "
    "and steady sunlight to produce electricity. The committee met on a rainy Tuesday.",
    "Maintenance\nEngineers clean the solar panels every month to keep the electricity output of the farm high. "
    "The cafeteria serves soup at noon.",
    "Costs\nThe solar farm repays its cost within eight years of selling electricity to the town. A dog slept "
    "near the gate.",
]
CREATED = datetime(2024, 3, 1, 12, 30, tzinfo=UTC)


@pytest.fixture(autouse=True)
def no_documents_env(monkeypatch):
    """Start every test from the defaults, whatever the machine's environment holds."""
    for name in DOCUMENTS_ENV:
        monkeypatch.delenv(name, raising=False)


# -- helpers -------------------------------------------------------------------------------------------------------

def make_pdf(pages: list[str] | None = None, blank_pages: int = 0) -> bytes:
    """A real PDF with one page per text (and `blank_pages` pages without any text), with known metadata."""
    pdf = FPDF()
    pdf.set_title("Solar Report")
    pdf.set_author("Ana Souza")
    pdf.set_subject("Energy")
    pdf.set_producer("bullrq tests")
    pdf.set_creation_date(CREATED)
    pdf.set_font("Helvetica", size=12)
    for text in pages if pages is not None else PAGES:
        pdf.add_page()
        pdf.multi_cell(0, 8, text)
    for _ in range(blank_pages):
        pdf.add_page()
    return bytes(pdf.output())


def encrypt(content: bytes, user_password: str) -> bytes:
    """The PDF encrypted with pypdf (RC4, which pypdf reads without optional packages)."""
    import pypdf

    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(content)))
    writer.encrypt(user_password, "owner-password")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def _store(handlers, content: bytes, filename: str = "report.pdf") -> str:
    with handlers.db() as conn:
        return store_document(conn, filename, content)


def _document(handlers, document_id: str) -> dict:
    with handlers.db() as conn:
        return conn.execute("SELECT * FROM documents WHERE id = %s", (document_id,)).fetchone()


def _analyses(handlers, document_id: str) -> list[dict]:
    with handlers.db() as conn:
        return conn.execute(
            "SELECT * FROM document_analyses WHERE document_id = %s ORDER BY analysis_type, temporary", (document_id,)
        ).fetchall()


def _chat_answer(content: str) -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "test-chat-1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
    }


def _openai(monkeypatch, http_service, route) -> None:
    monkeypatch.setenv("DOCUMENTS_ANALYSIS_PROVIDER", "openai")
    monkeypatch.setenv("OPENAI_API_URL", http_service.url)
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("OPENAI_MODEL", "test-chat-1")
    http_service.route("POST", "/v1/chat/completions", route)


# -- through a real worker ------------------------------------------------------------------------------------------

def test_extracts_text_metadata_and_progress_then_analyses_in_a_forked_child(handlers):
    document_id = _store(handlers, make_pdf())
    worker = handlers.start("documents")

    job = handlers.run("documents.process", {"documentId": document_id, "analysisType": "summary"})

    assert job["status"] == "completed", job["error"]
    result = job["result"]
    row = _document(handlers, document_id)
    assert (row["status"], row["page_count"], row["error"]) == ("processed", 3, None)
    assert row["processed_at"] is not None
    pages = row["text"].split("\f")
    assert len(pages) == 3
    for page, source in zip(pages, PAGES, strict=True):
        assert " ".join(page.split()) == " ".join(source.split())
    metadata = row["metadata"]
    assert (metadata["title"], metadata["author"], metadata["subject"], metadata["producer"]) == (
        "Solar Report", "Ana Souza", "Energy", "bullrq tests")
    assert datetime.fromisoformat(metadata["creation_date"]) == CREATED
    assert metadata["page_count"] == 3 and metadata["encrypted"] is False
    assert job["progress"]["processed"] == 3 and job["progress"]["failed"] == 0
    assert job["progress"]["percent"] == 100
    assert result["page_count"] == 3 and result["pages_read"] == 3 and result["extracted"] is True
    assert result["metadata"]["title"] == "Solar Report"
    # the extractive summary keeps the sentences about the document's main terms, in their original order
    assert result["provider"] == "extractive"
    chosen = split_sentences(result["summary"])
    in_text = split_sentences(row["text"])
    assert len(chosen) == 3 and all(sentence in in_text for sentence in chosen)
    assert [in_text.index(sentence) for sentence in chosen] == sorted(in_text.index(s) for s in chosen)
    assert chosen[0] == "Solar panels convert sunlight into electricity for the whole town."
    assert all("solar" in sentence.lower() for sentence in chosen)
    for noise in ("cafeteria", "dog", "rainy"):
        assert noise not in result["summary"]
    assert result["keywords"][:2] == ["solar", "electricity"]
    (analysis,) = _analyses(handlers, document_id)
    assert (analysis["analysis_type"], analysis["provider"], analysis["temporary"]) == ("summary", "extractive", False)
    assert analysis["result"]["summary"] == result["summary"]
    # run in a forked child: not the worker process itself
    assert result["pid"] != worker.pid


def test_a_rerun_keeps_one_analysis_row_and_each_job_forks_its_own_child(handlers):
    document_id = _store(handlers, make_pdf())
    handlers.start("documents")
    data = {"documentId": document_id, "analysisType": "complete"}

    first = handlers.run("documents.process", data)
    second = handlers.run("documents.process", data)
    forced = handlers.run("documents.process", {**data, "force": True})
    preview = handlers.run("documents.process", {"documentId": document_id, "analysisType": "summary",
                                                 "temporary": True})

    assert [j["status"] for j in (first, second, forced, preview)] == ["completed"] * 4
    assert [j["result"]["extracted"] for j in (first, second, forced)] == [True, False, True]
    assert second["progress"]["processed"] == 3  # reused text still reports its pages
    assert len({j["result"]["pid"] for j in (first, second, forced, preview)}) == 4
    assert first["result"]["summary"] == second["result"]["summary"] == forced["result"]["summary"]
    assert first["result"]["language"] == "en"
    assert first["result"]["statistics"]["sentences"] >= 6
    rows = _analyses(handlers, document_id)
    assert [(r["analysis_type"], r["temporary"]) for r in rows] == [("complete", False), ("summary", True)]
    assert rows[0]["id"] == first["result"]["analysis_id"] == forced["result"]["analysis_id"]


def test_a_corrupt_pdf_fails_at_once_and_marks_the_document_failed(handlers):
    truncated = _store(handlers, make_pdf()[:900], "truncated.pdf")
    garbage = _store(handlers, b"this is not a PDF at all, just some words" * 10, "garbage.pdf")
    handlers.start("documents")

    for document_id, reason in ((truncated, "PdfStreamError"), (garbage, "no %PDF- header")):
        job = handlers.run("documents.process", {"documentId": document_id}, RETRY)

        assert job["status"] == "failed" and job["attempt"] == 1  # permanent: no retry
        message = f"document {document_id} is not a readable PDF: "
        assert message in job["error"] and reason in job["error"]
        row = _document(handlers, document_id)
        assert row["status"] == "failed" and row["error"].startswith(message)
        assert row["text"] is None and _analyses(handlers, document_id) == []


def test_an_encrypted_pdf_fails_at_once_unless_the_empty_password_opens_it(handlers):
    locked = _store(handlers, encrypt(make_pdf(), "s3cret"), "locked.pdf")
    restricted = _store(handlers, encrypt(make_pdf(), ""), "restricted.pdf")  # owner password only
    handlers.start("documents")

    job = handlers.run("documents.process", {"documentId": locked}, RETRY)
    opened = handlers.run("documents.process", {"documentId": restricted})

    assert job["status"] == "failed" and job["attempt"] == 1
    assert f"document {locked} is encrypted" in job["error"]
    row = _document(handlers, locked)
    assert row["status"] == "failed" and row["error"].startswith(f"document {locked} is encrypted")
    assert opened["status"] == "completed", opened["error"]
    assert opened["result"]["metadata"]["encrypted"] is True and opened["result"]["page_count"] == 3
    assert "Solar panels convert sunlight" in _document(handlers, restricted)["text"]


def test_a_pdf_without_text_completes_with_a_note(handlers):
    document_id = _store(handlers, make_pdf([], blank_pages=2), "scan.pdf")
    handlers.start("documents")

    job = handlers.run("documents.process", {"documentId": document_id})

    assert job["status"] == "completed", job["error"]
    result = job["result"]
    assert result["note"] == NO_TEXT_NOTE and "no extractable text" in result["note"]
    assert (result["page_count"], result["pages_read"], result["pages_without_text"]) == (2, 2, 2)
    assert (result["provider"], result["summary"], result["keywords"]) == ("none", "", [])
    row = _document(handlers, document_id)
    assert row["status"] == "processed" and row["text"] == "\f"  # two empty pages, still separated
    (analysis,) = _analyses(handlers, document_id)
    assert analysis["result"]["note"] == NO_TEXT_NOTE


def test_an_unknown_document_fails_at_once_naming_it(handlers):
    handlers.start("documents")

    job = handlers.run("documents.process", {"documentId": "no-such-doc"}, RETRY)

    assert job["status"] == "failed" and job["attempt"] == 1
    assert "document 'no-such-doc' does not exist" in job["error"]


def test_limits_refuse_long_and_large_pdfs_and_cut_long_text(handlers, monkeypatch):
    monkeypatch.setenv("DOCUMENTS_MAX_PAGES", "3")
    monkeypatch.setenv("DOCUMENTS_MAX_TEXT_CHARS", "1000")
    monkeypatch.setenv("DOCUMENTS_MAX_BYTES", "20000")
    long_pdf = _store(handlers, make_pdf(PAGES + ["A fourth page."]))
    wordy = _store(handlers, make_pdf(["Solar words fill this page. " * 30] * 3))
    large = _store(handlers, b"%PDF-1.4\n" + b"0" * 30_000)
    handlers.start("documents")

    too_long = handlers.run("documents.process", {"documentId": long_pdf}, RETRY)
    cut = handlers.run("documents.process", {"documentId": wordy})
    too_large = handlers.run("documents.process", {"documentId": large}, RETRY)

    assert too_long["status"] == "failed" and too_long["attempt"] == 1
    assert f"document {long_pdf} has 4 pages; the limit is 3 (DOCUMENTS_MAX_PAGES)" in too_long["error"]
    assert _document(handlers, long_pdf)["status"] == "failed"
    assert cut["status"] == "completed", cut["error"]
    assert cut["result"]["truncated"] is True and cut["result"]["characters"] == 1000
    assert cut["result"]["pages_read"] == 2 < cut["result"]["page_count"]
    assert len(_document(handlers, wordy)["text"]) == 1000
    assert too_large["status"] == "failed" and too_large["attempt"] == 1
    assert f"document {large} is too large: 30,009 bytes; the limit is 20,000" in too_large["error"]


# -- the openai provider, played by a loopback server ---------------------------------------------------------------

def test_openai_provider_analyses_through_chat_completions(handlers, http_service, monkeypatch):
    answer = "```json\n" + json.dumps({"summary": "Solar farms power the town.", "keywords": "solar, energy"}) + "\n```"
    _openai(monkeypatch, http_service, _chat_answer(answer))
    document_id = _store(handlers, make_pdf(), "solar.pdf")
    handlers.start("documents")

    job = handlers.run("documents.process", {"documentId": document_id, "analysisType": "summary"})

    assert job["status"] == "completed", job["error"]
    assert (job["result"]["provider"], job["result"]["summary"]) == ("openai", "Solar farms power the town.")
    assert job["result"]["keywords"] == ["solar", "energy"] and job["result"]["model"] == "test-chat-1"
    (request,) = http_service.received("POST", "/v1/chat/completions")
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    body = request.json()
    assert body["model"] == "test-chat-1" and body["response_format"] == {"type": "json_object"}
    assert "JSON" in body["messages"][0]["content"]
    assert "solar.pdf" in body["messages"][1]["content"]
    assert "Solar panels convert sunlight" in body["messages"][1]["content"]
    (analysis,) = _analyses(handlers, document_id)
    assert analysis["provider"] == "openai" and analysis["result"]["keywords"] == ["solar", "energy"]


def test_a_provider_500_is_retried_without_extracting_again(handlers, http_service, monkeypatch):
    answers = iter([(500, {}, b"overloaded")])

    def route(request):
        return next(answers, _chat_answer('Sure! {"summary": "Panels and costs.", "keywords": ["solar"]}'))

    _openai(monkeypatch, http_service, route)
    document_id = _store(handlers, make_pdf())
    handlers.start("documents")

    job = handlers.run("documents.process", {"documentId": document_id}, RETRY)

    assert job["status"] == "completed", job["error"]
    assert job["attempt"] == 2 and job["result"]["extracted"] is False
    assert job["result"]["summary"] == "Panels and costs."
    assert len(http_service.received("POST", "/v1/chat/completions")) == 2
    assert len(_analyses(handlers, document_id)) == 1


def test_refused_credentials_fail_at_once_without_the_key(handlers, http_service, monkeypatch):
    _openai(monkeypatch, http_service, (401, {}, f"invalid api key {API_KEY}"))
    document_id = _store(handlers, make_pdf())
    handlers.start("documents")

    job = handlers.run("documents.process", {"documentId": document_id}, RETRY)

    assert job["status"] == "failed" and job["attempt"] == 1
    assert "HTTP 401" in job["error"] and "OPENAI_API_KEY" in job["error"]
    assert API_KEY not in job["error"]
    assert _document(handlers, document_id)["status"] == "processed"  # the extraction stands; only analysis failed


# -- unit tests: no worker ------------------------------------------------------------------------------------------

def test_open_pdf_names_the_problem():
    with pytest.raises(NotReadable, match="no %PDF- header"):
        open_pdf(b"GIF89a not a pdf", 100)
    with pytest.raises(NotReadable, match="is not a readable PDF"):
        open_pdf(make_pdf()[:700], 100)
    with pytest.raises(Encrypted, match="is encrypted"):
        open_pdf(encrypt(make_pdf(), "pw"), 100)
    with pytest.raises(TooLong, match="has 3 pages; the limit is 2"):
        open_pdf(make_pdf(), 2)
    assert len(open_pdf(make_pdf(), 3).pages) == 3


class _Page:
    """A page of a third-party reader, standing in for one pypdf cannot read (pypdf repairs most damage)."""

    def __init__(self, text: str | None):
        self.text = text

    def extract_text(self):
        from pypdf.errors import PdfReadError

        if self.text is None:
            raise PdfReadError("broken content stream")
        return self.text


class _Reader:
    def __init__(self, *texts: str | None):
        self.pages = [_Page(text) for text in texts]


def test_extract_text_reports_each_page_and_counts_unreadable_ones():
    seen = []
    result = extract_text(_Reader("one", None, "three\x00"), 3, 1000,
                          lambda r: seen.append((r.pages_read, r.pages_failed)))

    assert seen == [(1, 0), (1, 1), (2, 1)]
    assert result.text == "one\fthree"  # NUL removed: PostgreSQL text refuses it
    assert result.errors == ["page 2: PdfReadError: broken content stream"]
    with pytest.raises(NotReadable, match="none of its 2 pages could be read"):
        extract_text(_Reader(None, None), 2, 1000, lambda r: None)


def test_extractive_summary_keeps_the_best_sentences_in_order():
    text = ("Wind turbines turn wind into power. The cat is asleep. Wind farms need strong wind and turbines.\n\n"
            "Dr. Silva studies wind turbines at the university every day. It rained today.")

    assert split_sentences(text)[3] == "Dr. Silva studies wind turbines at the university every day."
    result = analyse(text, "summary")
    assert result["summary"] == ("Wind turbines turn wind into power. Wind farms need strong wind and turbines. "
                                 "Dr. Silva studies wind turbines at the university every day.")
    assert result["keywords"][:2] == ["wind", "turbines"]
    assert "statistics" not in result
    assert keywords(["beta", "alpha", "gamma", "alpha", "beta"], 2) == ["beta", "alpha"]  # ties: first seen wins
    assert analyse("", "complete") == {"summary": "", "keywords": [], "language": "unknown",
                                       "statistics": {"characters": 0, "words": 0, "unique_words": 0, "sentences": 0}}


def test_extractive_analysis_of_portuguese_text():
    text = ("O contrato de energia solar foi assinado pela prefeitura. A energia solar reduz os custos da cidade. "
            "Os painéis solares são limpos todos os meses pela equipe.")

    result = analyse(text, "complete")
    assert result["language"] == "pt"
    assert result["keywords"][:2] == ["energia", "solar"]  # two each: the first seen ranks first
    assert "pela" not in result["keywords"] and "os" not in result["keywords"]  # stopwords do not count
    assert guess_language("the cat and the dog were in the house".split()) == "en"


def test_parse_analysis_accepts_what_models_send():
    assert parse_analysis('{"summary": "S.", "keywords": ["a", "b", "a"]}') == {"summary": "S.", "keywords": ["a", "b"]}
    fenced = '```json\n{"summary": "S.", "tags": "x; y"}\n```'
    assert parse_analysis(fenced) == {"summary": "S.", "keywords": ["x", "y"]}
    assert parse_analysis('Here it is: {"summary": ["One.", "Two."]} Hope it helps!')["summary"] == "One. Two."
    assert parse_analysis("I cannot summarise this.") is None
    assert parse_analysis('{"keywords": ["a"]}') is None
    assert parse_analysis('{"summary": "  "}') is None


def test_settings_from_env():
    settings = DocumentSettings.from_env({"OPENAI_API_KEY": API_KEY})
    assert (settings.provider, settings.max_pages, settings.model) == ("extractive", 1000, "gpt-4o-mini")
    assert API_KEY not in repr(settings)
    with pytest.raises(ConfigError, match="DOCUMENTS_ANALYSIS_PROVIDER"):
        DocumentSettings.from_env({"DOCUMENTS_ANALYSIS_PROVIDER": "magic"})
    with pytest.raises(ConfigError, match="OPENAI_API_URL must be set"):
        DocumentSettings.from_env({"DOCUMENTS_ANALYSIS_PROVIDER": "openai"})
    with pytest.raises(ConfigError, match="DOCUMENTS_MAX_PAGES"):
        DocumentSettings.from_env({"DOCUMENTS_MAX_PAGES": "0"})
    with pytest.raises(ConfigError, match="OPENAI_API_URL"):
        DocumentSettings.from_env({"OPENAI_API_URL": "ftp://example"})


def test_job_data_is_checked_at_enqueue():
    task = get_task("documents.process")
    assert task.bind({"documentId": "d1"}) == {"document_id": "d1"}
    for bad in ({"documentId": ""}, {"documentId": 7}, {"documentId": "d1", "analysisType": "poem"},
                {"documentId": "d1", "temporary": "yes"}, {}, {"documentId": "d1", "extra": 1}):
        with pytest.raises(InvalidJobError):
            task.bind(bad)


def test_store_document_refuses_empty_input():
    with pytest.raises(ValueError, match="non-empty bytes"):
        store_document(None, "a.pdf", b"")
    with pytest.raises(ValueError, match="filename"):
        store_document(None, " ", b"%PDF-1.4")
