"""The `documents` queue: extract a stored PDF's text, page count and metadata into PostgreSQL, then analyse the
text through a pluggable provider and store the analysis.

Task types:
    documents.process   data: {"documentId": str, "analysisType": "summary" | "complete" ("complete"),
                               "temporary": bool (false), "force": bool (false)}
        Reads the PDF from `documents.content`, extracts metadata (title, author, subject, creator, producer,
        keywords, creation and modification dates as ISO 8601, page count, PDF version) and the text page by page
        (progress per page: processed = pages read, failed = pages pypdf could not read), stores them with status
        `processed`, then analyses the text and upserts the analysis into `document_analyses` on (document_id,
        analysis_type, temporary): a retry or a re-run replaces the row, never adds one. A document already
        processed is not extracted again unless `force` is true (a retry after a provider failure re-reads
        nothing). `temporary` analyses are previews, deleted by the cache-cleanup queue after 48 h.
        A corrupt PDF ("is not a readable PDF: ..."), an encrypted one that the empty password does not open
        ("is encrypted"), one too large or too long fail at once, with the document marked `failed` and the reason
        in `documents.error`. A PDF without extractable text (scanned images) completes, with a note saying so.
        Jobs run in a forked child per job (queues.py), so a PDF that crashes or bloats the parser cannot hurt the
        worker; the result's `pid` is the child's.

Environment:
    DOCUMENTS_MAX_BYTES           largest PDF processed, bytes (52428800: 50 MiB)
    DOCUMENTS_MAX_PAGES           most pages processed (1000)
    DOCUMENTS_MAX_TEXT_CHARS      characters of text kept per document; extraction stops there (2000000)
    DOCUMENTS_ANALYSIS_PROVIDER   extractive (default: local summary and keywords) | openai
    DOCUMENTS_ANALYSIS_MAX_CHARS  openai: characters of text sent (24000)
    DOCUMENTS_ANALYSIS_TIMEOUT    openai: seconds per request (120)
    OPENAI_API_URL                openai: base URL of an OpenAI-compatible server; requests go to
                                  <url>/v1/chat/completions
    OPENAI_API_KEY                openai: bearer token (optional for local servers); never logged or shown
    OPENAI_MODEL                  openai: model name (gpt-4o-mini)

Callers store an upload with `store_document(conn, filename, content)` and enqueue `documents.process` with the id.
"""

from __future__ import annotations

import logging
import os
import uuid

from app.errors import InvalidJobError, PermanentFailure
from app.tasks import task

logger = logging.getLogger(__name__)

ANALYSIS_TYPES = ("summary", "complete")
#: characters of a document id (ids are ours, 32 hex digits, but callers may bring their own)
MAX_ID_CHARS = 200
#: characters of a stored file name
MAX_FILENAME_CHARS = 255
#: progress percent reached when every page has been read; the analysis takes the rest
EXTRACTION_SHARE = 80
NO_TEXT_NOTE = ("no extractable text: the PDF holds only images (a scan?) or blank pages; nothing was analysed "
                "(text recognition, OCR, is not performed)")

_LOAD = """
    SELECT id, filename, status, page_count, metadata, text IS NOT NULL AS has_text, octet_length(content) AS size
    FROM documents WHERE id = %s
"""
_STORE_EXTRACTION = """
    UPDATE documents
    SET status = 'processed', page_count = %(page_count)s, metadata = %(metadata)s, text = %(text)s, error = NULL,
        processed_at = now()
    WHERE id = %(id)s
"""
_UPSERT_ANALYSIS = """
    INSERT INTO document_analyses (document_id, analysis_type, provider, result, temporary)
    VALUES (%(document_id)s, %(analysis_type)s, %(provider)s, %(result)s, %(temporary)s)
    ON CONFLICT (document_id, analysis_type, temporary)
    DO UPDATE SET provider = excluded.provider, result = excluded.result, created_at = now()
    RETURNING id
"""


def _validate_process(kwargs: dict) -> None:
    document_id = kwargs.get("document_id")
    if not isinstance(document_id, str) or not document_id.strip() or len(document_id) > MAX_ID_CHARS:
        raise InvalidJobError(f"documents.process: documentId must be a non-empty string of at most {MAX_ID_CHARS} "
                              "characters")
    if kwargs.get("analysis_type", "complete") not in ANALYSIS_TYPES:
        raise InvalidJobError(f"documents.process: analysisType must be one of {', '.join(ANALYSIS_TYPES)}")
    for name, key in (("temporary", "temporary"), ("force", "force")):
        if not isinstance(kwargs.get(name, False), bool):
            raise InvalidJobError(f"documents.process: {key} must be true or false")


@task("documents.process", queue="documents", validate=_validate_process)
def process(document_id: str, analysis_type: str = "complete", temporary: bool = False, force: bool = False) -> dict:
    """Extract a stored PDF's text and metadata into its row, then analyse the text and upsert the analysis."""
    from app.runtime import progress

    settings = _settings()
    row = _load(document_id)
    progress.report(percent=0, message=f"document {document_id}: {row['filename']}", processed=0, failed=0)
    reuse = row["status"] == "processed" and row["has_text"] and not force
    page_count, text, metadata = _stored(row) if reuse else _extract(row, settings)
    stats = metadata.get("extraction") or {}
    counts = {"processed": stats.get("pages_read", page_count), "failed": stats.get("pages_failed", 0)}
    if reuse:
        progress.report(percent=EXTRACTION_SHARE, message=f"text already extracted ({page_count} pages)", **counts)
    analysis = _analyse(row, text, analysis_type, temporary, settings)
    progress.report(percent=100, message=f"done: {page_count} pages, analysis by {analysis['provider']}", **counts)
    logger.info("documents: %s processed (%d pages, %d characters); %s analysis %d by %s", document_id, page_count,
                len(text), analysis_type, analysis["id"], analysis["provider"])
    return {
        "document_id": document_id,
        "filename": row["filename"],
        "page_count": page_count,
        **{key: stats.get(key) for key in ("pages_read", "pages_failed", "pages_without_text", "truncated")},
        "characters": len(text),
        "extracted": not reuse,
        "metadata": {key: value for key, value in metadata.items() if key != "extraction"},
        "analysis_id": analysis["id"],
        "analysis_type": analysis_type,
        "temporary": temporary,
        "provider": analysis["provider"],
        **analysis["result"],
        "pid": os.getpid(),  # the forked child that ran the job, not the worker
    }


def store_document(conn, filename: str, content: bytes) -> str:
    """Store an uploaded PDF as a pending document and return its new id; the caller's transaction commits it.

    Raises:
        ValueError: `content` is empty or not bytes, or `filename` is blank.
    """
    if not isinstance(content, bytes | bytearray | memoryview) or not len(content):
        raise ValueError("document content must be non-empty bytes")
    name = str(filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()  # a client's path is not ours to keep
    if not name:
        raise ValueError("document filename must not be blank")
    document_id = uuid.uuid4().hex
    conn.execute(
        "INSERT INTO documents (id, filename, content) VALUES (%s, %s, %s)",
        (document_id, name[:MAX_FILENAME_CHARS], bytes(content)),
    )
    return document_id


def _settings():
    """The queue's settings; a bad value fails the job at once (retrying cannot fix it)."""
    from app.errors import ConfigError
    from workers._document_settings import DocumentSettings

    try:
        return DocumentSettings.from_env()
    except ConfigError as exc:
        raise PermanentFailure(str(exc)) from None


def _load(document_id: str) -> dict:
    from app.runtime import resources

    with resources.database() as conn:
        row = conn.execute(_LOAD, (document_id,)).fetchone()
    if row is None:
        raise PermanentFailure(f"document {document_id!r} does not exist")
    return row


def _stored(row: dict) -> tuple[int, str, dict]:
    """The page count, text and metadata of a document processed before."""
    from app.runtime import resources

    with resources.database() as conn:
        text = conn.execute("SELECT text FROM documents WHERE id = %s", (row["id"],)).fetchone()
    if text is None or text["text"] is None:
        raise PermanentFailure(f"document {row['id']!r} was deleted while it was being processed")
    return row["page_count"] or 0, text["text"], row["metadata"] or {}


def _extract(row: dict, settings) -> tuple[int, str, dict]:
    """Read the PDF page by page and store its text and metadata; returns the page count, text and metadata.

    Raises:
        PermanentFailure: the PDF is too large, corrupt, encrypted or too long (the row is marked failed first).
    """
    from psycopg.types.json import Jsonb

    from app.runtime import progress, resources
    from workers._document_pdf import PdfProblem, extract_text, metadata, open_pdf

    document_id = row["id"]
    if row["size"] > settings.max_bytes:
        raise _mark_failed(document_id, f"is too large: {row['size']:,} bytes; the limit is {settings.max_bytes:,} "
                                        "(DOCUMENTS_MAX_BYTES)")
    with resources.database() as conn:
        conn.execute("UPDATE documents SET status = 'processing', error = NULL WHERE id = %s", (document_id,))
        content = conn.execute("SELECT content FROM documents WHERE id = %s", (document_id,)).fetchone()["content"]

    def on_page(done) -> None:
        seen = done.pages_read + done.pages_failed
        progress.report(percent=EXTRACTION_SHARE * seen / done.page_count, message=f"page {seen} of "
                        f"{done.page_count}", processed=done.pages_read, failed=done.pages_failed)

    try:
        reader = open_pdf(bytes(content), settings.max_pages)
        page_count = len(reader.pages)
        info = metadata(reader, page_count)
        extraction = extract_text(reader, page_count, settings.max_text_chars, on_page)
    except PdfProblem as exc:
        raise _mark_failed(document_id, str(exc)) from None
    info["extraction"] = extraction.summary()
    with resources.database() as conn:
        stored = conn.execute(_STORE_EXTRACTION, {"id": document_id, "page_count": page_count,
                                                  "metadata": Jsonb(info), "text": extraction.text}).rowcount
    if not stored:
        raise PermanentFailure(f"document {document_id!r} was deleted while it was being processed")
    return page_count, extraction.text, info


def _mark_failed(document_id: str, problem: str) -> PermanentFailure:
    """Mark the document failed with the reason; returns the job's permanent failure "document <id> <problem>"."""
    from app.runtime import resources

    message = f"document {document_id} {problem}"
    with resources.database() as conn:
        conn.execute("UPDATE documents SET status = 'failed', error = %s, processed_at = NULL WHERE id = %s",
                     (message, document_id))
    logger.warning("documents: %s", message)
    return PermanentFailure(message)


def _analyse(row: dict, text: str, analysis_type: str, temporary: bool, settings) -> dict:
    """Run the configured provider over the text (unless there is none) and upsert the analysis."""
    from psycopg.types.json import Jsonb

    from app.runtime import progress, resources
    from workers._document_providers import make_provider

    if text.strip():
        provider = make_provider(settings)
        progress.report(percent=EXTRACTION_SHARE + 5, message=f"analysing ({analysis_type}) with {provider.name}")
        name, result = provider.name, provider.analyse(text, analysis_type, row["filename"])
    else:
        name, result = "none", {"summary": "", "keywords": [], "note": NO_TEXT_NOTE}
    with resources.database() as conn:
        analysis_id = conn.execute(_UPSERT_ANALYSIS, {
            "document_id": row["id"],
            "analysis_type": analysis_type,
            "provider": name,
            "result": Jsonb(result),
            "temporary": temporary,
        }).fetchone()["id"]
    return {"id": analysis_id, "provider": name, "result": result}
