"""Reading a PDF with pypdf: opening it (a corrupt or encrypted file is refused with the reason), its metadata, and
its text page by page.

Problems are raised as `PdfProblem`s whose message completes the sentence "document <id> ...", so the handler can
name the document: "is not a readable PDF: ...", "is encrypted: ...", "has 2,000 pages; ...".
"""

from __future__ import annotations

import io
import logging
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

#: bytes from the start in which the "%PDF-" header must appear (the PDF spec allows leading junk; readers take 1 KiB)
HEADER_WINDOW = 1024
#: characters kept of each metadata value (a producer string is short; a malicious one need not be)
MAX_METADATA_CHARS = 1000
#: page errors kept in the result, so a PDF broken on every page does not flood the row
MAX_PAGE_ERRORS = 5
#: separates pages in the stored text (the convention of pdftotext), so callers can split it back into pages
PAGE_SEPARATOR = "\f"


class PdfProblem(Exception):
    """Raised when a PDF cannot be processed; the message completes "document <id> ..."."""


class NotReadable(PdfProblem):
    """Raised when the bytes are not a PDF pypdf can parse."""


class Encrypted(PdfProblem):
    """Raised when the PDF is encrypted and an empty password does not open it."""


class TooLong(PdfProblem):
    """Raised when the PDF has more pages than the configured limit."""


def _unreadable_errors() -> tuple[type[BaseException], ...]:
    """What parsing untrusted bytes may raise besides pypdf's own errors (its parser does not wrap them all)."""
    from pypdf.errors import PyPdfError

    return (PyPdfError, ValueError, KeyError, TypeError, IndexError, AttributeError, AssertionError,
            RecursionError, UnicodeError, zlib.error, struct.error)


@dataclass
class Extraction:
    """The text of a PDF and how reading its pages went."""

    page_count: int
    text: str = ""
    pages_read: int = 0  #: pages whose text was extracted (empty text included)
    pages_failed: int = 0  #: pages pypdf could not read
    pages_without_text: int = 0  #: pages read that hold no text (images, scans, blank pages)
    truncated: bool = False  #: the text reached the limit; later pages were not read
    errors: list[str] = field(default_factory=list)  #: the first page errors, "page N: Type: message"

    def summary(self) -> dict:
        """What the metadata and the job's result keep about the extraction."""
        return {
            "pages_read": self.pages_read,
            "pages_failed": self.pages_failed,
            "pages_without_text": self.pages_without_text,
            "characters": len(self.text),
            "truncated": self.truncated,
            "errors": self.errors,
        }


def open_pdf(content: bytes, max_pages: int):
    """Open a PDF, decrypting it with the empty password when it is encrypted.

    Returns:
        The `pypdf.PdfReader`.

    Raises:
        NotReadable: the bytes are not a PDF pypdf can parse.
        Encrypted: the PDF needs a password, or a cipher pypdf cannot use without an optional package.
        TooLong: the PDF has more than `max_pages` pages.
    """
    import pypdf
    from pypdf.errors import DependencyError

    start = content[:HEADER_WINDOW]
    if b"%PDF-" not in start:
        raise NotReadable(f"is not a readable PDF: no %PDF- header (it starts with {content[:16]!r})")
    try:
        reader = pypdf.PdfReader(io.BytesIO(content))
        if reader.is_encrypted:
            _decrypt(reader)
        page_count = len(reader.pages)
    except PdfProblem:
        raise
    except DependencyError as exc:  # AES needs `cryptography`: a setup matter, but no retry installs it
        raise Encrypted(f"is encrypted with a cipher that needs an optional package: {exc} "
                        "(pip install 'pypdf[crypto]')") from None
    except _unreadable_errors() as exc:
        raise NotReadable(f"is not a readable PDF: {type(exc).__name__}: {exc}") from None
    if page_count > max_pages:
        raise TooLong(f"has {page_count:,} pages; the limit is {max_pages:,} (DOCUMENTS_MAX_PAGES)")
    return reader


def _decrypt(reader) -> None:
    """Open an encrypted PDF with the empty user password (many PDFs are encrypted only to restrict printing)."""
    from pypdf import PasswordType

    if reader.decrypt("") == PasswordType.NOT_DECRYPTED:
        raise Encrypted("is encrypted: it cannot be opened without a password")


def metadata(reader, page_count: int) -> dict:
    """The document information of an open PDF: title, author, subject, creator, producer, keywords, creation
    and modification dates (ISO 8601), page count, PDF version and whether it was encrypted."""
    info = _info(reader)
    found = {
        "title": _value(info, "/Title"),
        "author": _value(info, "/Author"),
        "subject": _value(info, "/Subject"),
        "creator": _value(info, "/Creator"),
        "producer": _value(info, "/Producer"),
        "keywords": _value(info, "/Keywords"),
        "creation_date": _date(info, "creation_date", "/CreationDate"),
        "modification_date": _date(info, "modification_date", "/ModDate"),
    }
    header = clean(str(getattr(reader, "pdf_header", "") or ""))
    return {
        **found,
        "page_count": page_count,
        "pdf_version": header.removeprefix("%PDF-") or None,
        "encrypted": bool(reader.is_encrypted),
    }


def _info(reader):
    """The document information dictionary, or None when the PDF has none or it is broken."""
    try:
        return reader.metadata
    except _unreadable_errors() as exc:
        logger.info("pdf: unreadable document information (%s: %s)", type(exc).__name__, exc)
        return None


def _value(info, key: str) -> str | None:
    if info is None:
        return None
    try:
        raw = info.get(key)
    except _unreadable_errors():
        return None
    text = clean(str(raw)).strip() if raw is not None else ""
    return text[:MAX_METADATA_CHARS] or None


def _date(info, attribute: str, key: str) -> str | None:
    """A PDF date as ISO 8601; the raw string when it does not parse (PDF producers get the format wrong a lot)."""
    if info is None:
        return None
    try:
        moment = getattr(info, attribute)
    except _unreadable_errors():
        return _value(info, key)
    return moment.isoformat() if moment is not None else None


def extract_text(reader, page_count: int, max_chars: int, on_page: Callable[[Extraction], None]) -> Extraction:
    """The text of every page, in order, pages separated by a form feed; `on_page` is called after each page.

    A page pypdf cannot read is counted as failed and the others are still read; once the text reaches
    `max_chars` it is cut there and the remaining pages are left unread (`truncated`).

    Raises:
        NotReadable: the PDF has pages and none of them could be read.
    """
    result = Extraction(page_count=page_count)
    parts: list[str] = []
    size = 0
    for number in range(1, page_count + 1):
        page_text = _page_text(reader, number, result)
        if page_text is not None:
            result.pages_read += 1
            result.pages_without_text += not page_text.strip()
            separator = len(PAGE_SEPARATOR) if parts else 0
            room = max(max_chars - size - separator, 0)
            if len(page_text) > room:
                page_text, result.truncated = page_text[:room], True
            parts.append(page_text)
            size += separator + len(page_text)
        on_page(result)
        if result.truncated:
            break
    if page_count and result.pages_failed == page_count:
        raise NotReadable(f"is not a readable PDF: none of its {page_count} pages could be read ({result.errors[0]})")
    result.text = PAGE_SEPARATOR.join(parts)
    return result


def _page_text(reader, number: int, result: Extraction) -> str | None:
    """The text of page `number` (1-based), cleaned; None when the page cannot be read (recorded in `result`)."""
    try:
        text = reader.pages[number - 1].extract_text() or ""
    except _unreadable_errors() as exc:
        result.pages_failed += 1
        if len(result.errors) < MAX_PAGE_ERRORS:
            result.errors.append(f"page {number}: {type(exc).__name__}: {exc}"[:300])
        logger.info("pdf: page %d unreadable (%s: %s)", number, type(exc).__name__, exc)
        return None
    return clean(text).rstrip()


def clean(text: str) -> str:
    """Text PostgreSQL accepts: no NUL characters (text and jsonb refuse them) and no lone surrogates."""
    text = text.replace("\x00", "")
    return text.encode("utf-8", "replace").decode("utf-8")
