"""Items out of a fetched answer, by source kind (feed, json, html), and the content hash that deduplicates them.

Every parser takes the bytes already fetched (nothing here touches the network or the disk) and returns a
`Parsed`: the items in document order, at most `max_items`, plus how many were left out. A malformed answer or a
source config that does not fit it raises `PermanentFailure` with a message saying what is wrong.

Source config (`harvest_sources.config`, a JSON object):
    feed   nothing
    json   itemsPath: dotted path to the list of items ("data.items"; numbers index lists); default: the answer
           itself must be the list. fields: {"title", "content", "url", "published", "id"}: dotted paths inside an
           item (defaults: the same names). contentFormat: "text" (default) or "html" (tags are stripped)
    html   selector: a simple rule (tag, .class, #id, tag.class, tag#id) naming the elements whose text is the
           content; default: the page's <main>, else its <article>s, else its <body> without nav/header/footer
"""

from __future__ import annotations

import calendar
import email.utils
import hashlib
import io
import json
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime

from app.errors import PermanentFailure
from workers._harvest_html import Selector, html_to_text, page_text, tidy

KINDS = ("feed", "json", "html")
JSON_FIELDS = ("title", "content", "url", "published", "id")
#: characters kept of a title (feeds sometimes put a whole post in it)
MAX_TITLE_CHARS = 1000
_HTML_TYPES = ("text/html", "application/xhtml+xml", "html", "xhtml")
#: the declaration feedparser writes over the document's own before parsing
_FEEDPARSER_DECLARATION = "<?xml version='1.0' encoding='utf-8'?>"
_DECLARATION = re.compile(rb"<\?xml[^>]*?>")
_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9._:-]+)""", re.IGNORECASE)


@dataclass(frozen=True)
class Item:
    """One piece of content, plain text, ready to store."""

    title: str | None
    content: str  #: may be empty when the title says it all (headline-only feeds)
    url: str | None = None
    published_at: datetime | None = None
    metadata: dict = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        return content_hash(self.title, self.content)


@dataclass(frozen=True)
class Parsed:
    """The items of one answer."""

    items: list[Item]
    skipped: int = 0  #: entries with neither a title nor any text
    truncated: int = 0  #: entries past `max_items`, left for a later fetch


def normalise(text: str | None) -> str:
    """`text` as compared for deduplication: Unicode NFKC, whitespace collapsed to single spaces, lowercase."""
    return " ".join(unicodedata.normalize("NFKC", text or "").split()).lower()


def content_hash(title: str | None, text: str | None) -> str:
    """sha256 (hex) of the normalised title and text: the same words from any source give the same hash."""
    return hashlib.sha256(f"{normalise(title)}\n{normalise(text)}".encode()).hexdigest()


def parse(kind: str, body: bytes, *, config: dict, max_items: int, url: str, content_type: str = "") -> Parsed:
    """The items of `body`, fetched from `url`, for a source of `kind` with `config`.

    Raises:
        PermanentFailure: the body does not parse as `kind`, or `config` does not fit it.
    """
    if not isinstance(config, dict):
        raise PermanentFailure(f"config must be a JSON object, not {type(config).__name__}")
    if kind == "feed":
        return parse_feed(body, max_items=max_items, url=url, content_type=content_type)
    if kind == "json":
        return parse_json(body, config, max_items=max_items)
    if kind == "html":
        return parse_html(body, config, url=url, content_type=content_type)
    raise PermanentFailure(f"unknown source kind {kind!r}; use one of {', '.join(KINDS)}")


# -- feeds ---------------------------------------------------------------------------------------------------------

def parse_feed(body: bytes, *, max_items: int, url: str = "", content_type: str = "") -> Parsed:
    """The entries of an RSS or Atom feed, HTML stripped from their titles and content.

    Raises:
        PermanentFailure: the body is not well-formed XML or not a feed.
    """
    import feedparser

    headers = {"content-location": url, "content-type": content_type or "application/xml"}
    # a stream, never bytes or str: feedparser opens a str that looks like a URL, and bytes that name a file
    parsed = feedparser.parse(io.BytesIO(body), response_headers=headers)
    _check_feed(parsed, body)
    feed_title = tidy(parsed.feed.get("title", ""))
    candidates = [_feed_item(entry, feed_title) for entry in parsed.entries[:max_items]]
    return _collect(candidates, truncated=max(0, len(parsed.entries) - max_items))


def _check_feed(parsed, body: bytes) -> None:
    import xml.sax

    problem = parsed.get("bozo_exception")
    # undefined entities (&nbsp; in RSS) are common and harmless: feedparser's lenient parser reads them right
    if isinstance(problem, xml.sax.SAXException) and "undefined entity" not in str(problem):
        where = ""
        if isinstance(problem, xml.sax.SAXParseException):
            line, column = _source_position(body, problem.getLineNumber(), problem.getColumnNumber())
            where = f" at line {line}, column {column}"
        raise PermanentFailure(f"malformed feed: XML error{where}: {problem.getMessage()}")
    if not parsed.get("version"):
        raise PermanentFailure("not an RSS or Atom feed (no <rss>, <feed> or <rdf:RDF> root element)")


def _source_position(body: bytes, line: int, column: int) -> tuple[int, int]:
    """Where a parse error is in `body`: feedparser parses a copy whose XML declaration it rewrote (a new first
    line when there was none), so the positions it reports are shifted."""
    declaration = _DECLARATION.match(body.removeprefix(b"\xef\xbb\xbf"))
    if declaration is None:
        return max(1, line - 1), column
    if line == 1:
        column -= len(_FEEDPARSER_DECLARATION) - len(declaration.group())
    return line, column


def _feed_item(entry, feed_title: str) -> Item | None:
    title = _detail_text(entry.get("title_detail"), entry.get("title"))
    body = _entry_body(entry)
    published = entry.get("published_parsed") or entry.get("updated_parsed")
    metadata = {"guid": entry.get("id"), "author": entry.get("author"), "feed": feed_title or None,
                "tags": [tag.get("term") for tag in entry.get("tags", []) if tag.get("term")] or None}
    return _item(title, body, entry.get("link"), _from_struct(published), metadata)


def _entry_body(entry) -> str:
    """The fullest text an entry has: its content, else its summary."""
    for detail in entry.get("content") or []:
        text = _detail_text(detail, detail.get("value"))
        if text:
            return text
    return _detail_text(entry.get("summary_detail"), entry.get("summary"))


def _detail_text(detail, value) -> str:
    if not value:
        return ""
    kind = (detail or {}).get("type") or "text/html"
    return html_to_text(value) if kind in _HTML_TYPES else tidy(value)


def _from_struct(moment) -> datetime | None:
    """feedparser's UTC struct_time as an aware datetime."""
    if not moment:
        return None
    try:
        return datetime.fromtimestamp(calendar.timegm(moment), UTC)
    except (OverflowError, ValueError):
        return None


# -- JSON ----------------------------------------------------------------------------------------------------------

def parse_json(body: bytes, config: dict, *, max_items: int) -> Parsed:
    """The items of a JSON answer: the list at `config.itemsPath`, fields named by `config.fields`.

    Raises:
        PermanentFailure: the body is not JSON, or the config does not fit it.
    """
    fields, items_path, as_html = _json_config(config)
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise PermanentFailure(f"malformed JSON: {exc}") from None
    entries = _path(document, items_path) if items_path else document
    if not isinstance(entries, list):
        where = f"at config.itemsPath {items_path!r}" if items_path else "at the top level (set config.itemsPath)"
        raise PermanentFailure(f"JSON answer has no list of items {where}, found {_json_type(entries)}")
    candidates = [_json_item(entry, fields, as_html) for entry in entries[:max_items]]
    return _collect(candidates, truncated=max(0, len(entries) - max_items))


def _json_config(config: dict) -> tuple[dict[str, str], str, bool]:
    fields = config.get("fields") or {}
    if not isinstance(fields, dict):
        raise PermanentFailure("config.fields must be an object such as {\"title\": \"headline\"}")
    unknown = sorted(set(fields) - set(JSON_FIELDS))
    if unknown:
        raise PermanentFailure(f"config.fields.{unknown[0]} is not a field; fields: {', '.join(JSON_FIELDS)}")
    for name, path in fields.items():
        if not isinstance(path, str) or not path.strip():
            raise PermanentFailure(f"config.fields.{name} must be a dotted path such as \"data.title\"")
    items_path = config.get("itemsPath") or ""
    if not isinstance(items_path, str):
        raise PermanentFailure("config.itemsPath must be a dotted path such as \"data.items\"")
    content_format = config.get("contentFormat", "text")
    if content_format not in ("text", "html"):
        raise PermanentFailure(f"config.contentFormat must be \"text\" or \"html\", not {content_format!r}")
    return {name: fields.get(name, name) for name in JSON_FIELDS}, items_path, content_format == "html"


def _path(document, path: str):
    """The value at dotted `path` in `document` (a number indexes a list).

    Raises:
        PermanentFailure: a step of the path is missing.
    """
    value = document
    for done, step in enumerate(path.split(".")):
        if isinstance(value, dict) and step in value:
            value = value[step]
        elif isinstance(value, list) and step.lstrip("-").isdigit() and -len(value) <= int(step) < len(value):
            value = value[int(step)]
        else:
            at = ".".join(path.split(".")[:done]) or "the top level"
            raise PermanentFailure(f"config.itemsPath {path!r}: no {step!r} at {at} of the JSON answer "
                                   f"(found {_json_type(value)})")
    return value


def _field(entry: dict, path: str):
    value = entry
    for step in path.split("."):
        if isinstance(value, dict):
            value = value.get(step)
        elif isinstance(value, list) and step.isdigit() and int(step) < len(value):
            value = value[int(step)]
        else:
            return None
    return value


def _json_item(entry, fields: dict[str, str], as_html: bool) -> Item | None:
    if not isinstance(entry, dict):
        return None
    title, content, url = (_scalar(_field(entry, fields[name])) for name in ("title", "content", "url"))
    body = html_to_text(content) if as_html else tidy(content)
    metadata = {"id": _scalar(_field(entry, fields["id"])) or None}
    return _item(tidy(title), body, url or None, parse_date(_field(entry, fields["published"])), metadata)


def _scalar(value) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, dict | list):
        return ""
    return str(value)


def _json_type(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "null" if value is None else "a number")


def parse_date(value) -> datetime | None:
    """An aware datetime from ISO 8601, RFC 2822 or Unix time (seconds, or milliseconds when that large); else None."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        if isinstance(value, int | float):
            seconds = value / 1000 if abs(value) > 1e11 else value
            return datetime.fromtimestamp(seconds, UTC)
        if not isinstance(value, str) or not value.strip():
            return None
        text = value.strip()
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            moment = email.utils.parsedate_to_datetime(text)
    except (ValueError, TypeError, OverflowError, OSError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# -- HTML pages ----------------------------------------------------------------------------------------------------

def parse_html(body: bytes, config: dict, *, url: str, content_type: str = "") -> Parsed:
    """One item: the page's title and main text (or the text of the elements `config.selector` names).

    Raises:
        PermanentFailure: the selector is not a simple rule, or matches nothing on the page.
    """
    rule = config.get("selector")
    selector = Selector.parse(rule) if rule is not None else None
    page = page_text(decode_html(body, content_type), selector)
    description = page.meta.get("description") or page.meta.get("og:description")
    metadata = {"description": description, "lang": page.meta.get("lang")}
    return _collect([_item(page.title, page.text, url or None, None, metadata)], truncated=0)


def decode_html(body: bytes, content_type: str = "") -> str:
    """The page as text: the charset of the Content-Type, else of a <meta> in its first 2 KB, else UTF-8."""
    for charset in (_header_charset(content_type), _meta_charset(body[:2048]), "utf-8"):
        if charset:
            try:
                return body.decode(charset, errors="replace")
            except LookupError:
                continue  # a charset Python does not know
    return body.decode("utf-8", errors="replace")


def _header_charset(content_type: str) -> str | None:
    match = re.search(r"charset\s*=\s*\"?([A-Za-z0-9._:-]+)", content_type or "", re.IGNORECASE)
    return match.group(1) if match else None


def _meta_charset(head: bytes) -> str | None:
    match = _CHARSET.search(head)
    return match.group(1).decode("ascii") if match else None


# -- common --------------------------------------------------------------------------------------------------------

def _item(title: str, text: str, url, published_at, metadata: dict) -> Item | None:
    """An item, or None when there is nothing to store (neither a title nor any text)."""
    title = (title or "")[:MAX_TITLE_CHARS].strip()
    if not title and not text:
        return None
    clean = {key: value for key, value in metadata.items() if value not in (None, "", [])}
    return Item(title=title or None, content=text, url=url if isinstance(url, str) else None,
                published_at=published_at, metadata=clean)


def _collect(candidates: list[Item | None], truncated: int) -> Parsed:
    items = [item for item in candidates if item is not None]
    return Parsed(items=items, skipped=len(candidates) - len(items), truncated=truncated)
