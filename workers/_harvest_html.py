"""Plain text out of HTML with the standard library's parser: for feed entries (fragments) and whole pages.

Scripts, styles and other non-text elements are dropped; block elements become line breaks; whitespace is
collapsed. A page's main text is the first `<main>`, else its `<article>` elements, else its `<body>` without
navigation, header, footer, aside and form elements; a simple selector (`tag`, `.class`, `#id`, `tag.class`,
`tag#id`) can name the elements to take instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser

from app.errors import PermanentFailure

#: elements whose content is never text for a reader
SKIPPED = frozenset({"script", "style", "noscript", "template", "svg", "math", "iframe", "object", "canvas"})
#: elements around a page's main text, left out of the fallback to <body>
BOILERPLATE = frozenset({"nav", "header", "footer", "aside", "form"})
#: elements that end a line of text
BLOCKS = frozenset({
    "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "fieldset", "figcaption", "figure",
    "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main", "nav", "ol", "p", "pre",
    "section", "table", "td", "th", "tr", "ul",
})
#: elements that never have an end tag
VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"})

# what an open element contributes to the text inside it, as bit flags
_SKIP, _BOILER, _MAIN, _ARTICLE, _SELECTED, _TITLE, _H1 = (1 << n for n in range(7))
_BUFFERS = {"main": _MAIN, "article": _ARTICLE, "selected": _SELECTED, "title": _TITLE, "h1": _H1}
_SELECTOR = re.compile(r"^(?P<tag>[a-z][a-z0-9-]*)?(?:(?P<sign>[.#])(?P<name>[A-Za-z0-9_-]+))?$")
_SPACES = re.compile(r"[^\S\n]+")


@dataclass(frozen=True)
class Selector:
    """A simple CSS-like rule: a tag name, a class or an id, or a tag with a class or an id."""

    tag: str | None = None
    class_name: str | None = None
    id: str | None = None

    @classmethod
    def parse(cls, rule: str) -> Selector:
        """The selector written `rule`.

        Raises:
            PermanentFailure: `rule` is not one of the simple forms.
        """
        match = _SELECTOR.match(rule.strip()) if isinstance(rule, str) else None
        if not match or not (match["tag"] or match["name"]):
            raise PermanentFailure(f"selector {rule!r} is not a simple rule: use tag, .class, #id, tag.class or tag#id")
        name = match["name"]
        return cls(match["tag"], name if match["sign"] == "." else None, name if match["sign"] == "#" else None)

    def matches(self, tag: str, attrs: dict[str, str]) -> bool:
        if self.tag and tag != self.tag:
            return False
        if self.id and attrs.get("id") != self.id:
            return False
        return not self.class_name or self.class_name in (attrs.get("class") or "").split()


class _Extractor(HTMLParser):
    """Collects the text of a document into buffers by where it appears."""

    def __init__(self, selector: Selector | None = None) -> None:
        super().__init__(convert_charrefs=True)
        self.selector = selector
        self.stack: list[tuple[str, int]] = []  #: open elements and the flags of the text inside them
        self.text: dict[str, list[str]] = {"all": [], "body": [], **{name: [] for name in _BUFFERS}}
        self.meta: dict[str, str] = {}
        self.selected = 0  #: elements the selector matched

    def flags(self) -> int:
        return self.stack[-1][1] if self.stack else 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "meta":
            self._meta(values)
        elif tag == "html" and values.get("lang"):
            self.meta.setdefault("lang", values["lang"])
        if tag in BLOCKS:
            self._break()
        if tag in VOID:
            return
        self.stack.append((tag, self.flags() | self._own_flags(tag, values)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "meta":
            self._meta({name: value or "" for name, value in attrs})
        if tag in BLOCKS:
            self._break()

    def handle_endtag(self, tag: str) -> None:
        # an end tag closes every element left open inside it (HTML lets <p> and <li> go unclosed)
        for depth in range(len(self.stack) - 1, -1, -1):
            if self.stack[depth][0] == tag:
                del self.stack[depth:]
                break
        if tag in BLOCKS:
            self._break()

    def handle_data(self, data: str) -> None:
        flags = self.flags()
        if flags & _SKIP:
            return
        if flags & _TITLE:
            self.text["title"].append(data)  # the page's name, not part of its text
            return
        self.text["all"].append(data)
        if not flags & _BOILER:
            self.text["body"].append(data)
        for name, bit in _BUFFERS.items():
            if flags & bit and name != "title":
                self.text[name].append(data)

    def _own_flags(self, tag: str, attrs: dict[str, str]) -> int:
        flags = 0
        if tag in SKIPPED:
            flags |= _SKIP
        if tag in BOILERPLATE:
            flags |= _BOILER
        if tag == "title" and not self.flags() & _SKIP:  # an <svg> has titles of its own
            flags |= _TITLE
        if tag == "h1" and not self.text["h1"]:
            flags |= _H1
        if tag == "main" and not self.text["main"]:
            flags |= _MAIN
        if tag == "article":
            flags |= _ARTICLE
        if self.selector is not None and self.selector.matches(tag, attrs):
            self.selected += 1
            flags |= _SELECTED
        return flags

    def _meta(self, attrs: dict[str, str]) -> None:
        name = (attrs.get("name") or attrs.get("property") or "").lower()
        if name in ("description", "og:description", "og:title") and attrs.get("content"):
            self.meta.setdefault(name, attrs["content"])

    def _break(self) -> None:
        for parts in self.text.values():
            if parts and parts[-1] != "\n":
                parts.append("\n")

    def result(self, name: str) -> str:
        return tidy("".join(self.text[name]))


def tidy(text: str) -> str:
    """`text` with runs of spaces collapsed, lines trimmed and empty lines dropped."""
    lines = (_SPACES.sub(" ", line).strip() for line in text.replace("\r", "\n").split("\n"))
    return "\n".join(line for line in lines if line)


def html_to_text(markup: str) -> str:
    """The plain text of an HTML fragment (a feed entry's content or summary)."""
    extractor = _Extractor()
    extractor.feed(markup)
    extractor.close()
    return extractor.result("all")


@dataclass(frozen=True)
class Page:
    """What a page says: its title, main text and a few meta values (description, lang)."""

    title: str
    text: str
    meta: dict[str, str]


def page_text(markup: str, selector: Selector | None = None) -> Page:
    """The title and main text of a whole page.

    Raises:
        PermanentFailure: a selector was given and no element of the page matches it.
    """
    extractor = _Extractor(selector=selector)
    extractor.feed(markup)
    extractor.close()
    if selector is not None:
        if not extractor.selected:
            raise PermanentFailure(f"no element of the page matches the selector {_describe(selector)}")
        text = extractor.result("selected")
    else:
        text = extractor.result("main") or extractor.result("article") or extractor.result("body")
    title = extractor.result("title") or extractor.result("h1") or extractor.meta.get("og:title", "")
    title = " ".join(title.split())
    return Page(title=title, text=text, meta=dict(extractor.meta))


def _describe(selector: Selector) -> str:
    return (selector.tag or "") + (f".{selector.class_name}" if selector.class_name else "") + (
        f"#{selector.id}" if selector.id else "")
