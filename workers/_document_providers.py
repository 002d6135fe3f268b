"""Analysis providers of the documents queue behind one small interface.

A provider has a `name` and `analyse(text, analysis_type, filename) -> dict` holding at least `summary` (str) and
`keywords` (list of str). Two exist, chosen by DOCUMENTS_ANALYSIS_PROVIDER: `extractive` (the default, local, see
`_document_extractive`) and `openai` (any server speaking OpenAI's `/v1/chat/completions`).
"""

from __future__ import annotations

import json
import re
from typing import Protocol

from app.errors import PermanentFailure, ServiceUnavailableError
from workers._document_settings import DocumentSettings

#: keywords kept from an HTTP provider's answer, and characters of each
MAX_KEYWORDS = 30
MAX_KEYWORD_CHARS = 100
#: characters of an HTTP provider's summary kept (a model ignoring the length asked for must not fill the row)
MAX_SUMMARY_CHARS = 20_000
_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")


class Provider(Protocol):
    """Turns a document's text into an analysis."""

    name: str  #: stored with each analysis: extractive, openai

    def analyse(self, text: str, analysis_type: str, filename: str) -> dict:
        """The analysis of `text`: at least {"summary": str, "keywords": [str]}."""
        ...


def make_provider(settings: DocumentSettings) -> Provider:
    """The provider the settings choose."""
    if settings.provider == "openai":
        return OpenAIProvider(settings)
    return ExtractiveProvider()


class ExtractiveProvider:
    """Local and deterministic: the best sentences and most frequent words (no network, no model)."""

    name = "extractive"

    def analyse(self, text: str, analysis_type: str, filename: str) -> dict:
        from workers._document_extractive import analyse

        return analyse(text, analysis_type)


class OpenAIProvider:
    """POST {OPENAI_API_URL}/v1/chat/completions asking for a JSON object {summary, keywords}."""

    name = "openai"
    #: sentences of summary and keywords asked for, per analysis type
    LENGTHS = {"summary": (3, 10), "complete": (8, 20)}

    def __init__(self, settings: DocumentSettings):
        self.model = settings.model
        base = settings.api_url.rstrip("/")
        # a base URL given with its /v1 (as OpenAI documents it) must not become /v1/v1
        self.url = base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")
        self._key = settings.api_key
        self._timeout = settings.analysis_timeout
        self._max_chars = settings.analysis_max_chars

    @property
    def label(self) -> str:
        return f"documents analysis provider openai (model {self.model})"

    def analyse(self, text: str, analysis_type: str, filename: str) -> dict:
        from app import http

        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        response = http.request("POST", self.url, service=self.label, headers=headers, timeout=self._timeout,
                                json=self._body(text, analysis_type, filename), secret=self._key,
                                secret_name="OPENAI_API_KEY")
        content = self._content(response)
        analysis = parse_analysis(content)
        if analysis is None:
            # a model that wrote prose instead of the JSON asked for may well comply on another try
            raise ServiceUnavailableError(f"{self.label}: the answer holds no JSON object with a summary: "
                                          f"{content[:200]!r}")
        analysis["model"] = self.model
        analysis["input_characters"] = min(len(text), self._max_chars)
        analysis["input_truncated"] = len(text) > self._max_chars
        return analysis

    def _body(self, text: str, analysis_type: str, filename: str) -> dict:
        sentences, keywords = self.LENGTHS[analysis_type]
        instructions = (
            "You analyse documents. Answer with one JSON object and nothing else, of the form "
            '{"summary": "...", "keywords": ["...", "..."]}. The summary has at most '
            f"{sentences} sentences and is written in the document's language; keywords are the {keywords} terms "
            "that best say what the document is about, most important first."
        )
        return {
            "model": self.model,
            "temperature": 0,
            "response_format": {"type": "json_object"},
            "messages": [
                {"role": "system", "content": instructions},
                {"role": "user", "content": f"Document: {filename}\n\n{text[:self._max_chars]}"},
            ],
        }

    def _content(self, response) -> str:
        """The text of the answer's first choice."""
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise PermanentFailure(
                f"{self.label}: the answer is not a chat completion ({type(exc).__name__}: {exc})"
            ) from None
        if not isinstance(content, str):
            raise PermanentFailure(f"{self.label}: the answer's message content is {type(content).__name__}, "
                                   "not text")
        return content


def parse_analysis(content: str) -> dict | None:
    """{"summary": str, "keywords": [str]} from a model's answer, or None when it holds no usable summary.

    Models wrap JSON in code fences, add a sentence before it, send keywords as one comma-separated string or
    under another name: all of that is accepted.
    """
    data = _json_object(content)
    if data is None:
        return None
    summary = data.get("summary")
    if isinstance(summary, list):
        summary = " ".join(str(part) for part in summary)
    if not isinstance(summary, str) or not summary.strip():
        return None
    raw = next((data[k] for k in ("keywords", "keyphrases", "key_words", "tags") if k in data), [])
    return {"summary": summary.strip()[:MAX_SUMMARY_CHARS], "keywords": _keywords(raw)}


def _json_object(content: str) -> dict | None:
    text = _FENCE.sub("", content.strip())
    candidates = [text]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start:end + 1])
    for candidate in candidates:
        try:
            data = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(data, dict):
            return data
    return None


def _keywords(raw: object) -> list[str]:
    """Keywords as a list of distinct non-empty strings, in the model's order."""
    if isinstance(raw, str):
        raw = re.split(r"[,;\n]", raw)
    if not isinstance(raw, list):
        return []
    seen: dict[str, None] = {}
    for item in raw:
        if isinstance(item, str | int | float) and not isinstance(item, bool):
            word = str(item).strip()[:MAX_KEYWORD_CHARS]
            if word and word.lower() not in {k.lower() for k in seen}:
                seen[word] = None
    return list(seen)[:MAX_KEYWORDS]
