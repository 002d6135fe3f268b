"""The documents queue's settings, read from the environment into one frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field

from app.config import env_number, env_url, environment
from app.errors import ConfigError

PROVIDERS = ("extractive", "openai")
DEFAULT_PROVIDER = "extractive"
DEFAULT_OPENAI_MODEL = "gpt-4o-mini"
#: bytes: the largest PDF processed (50 MiB); bytea itself stops at 1 GiB
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
#: pages: a longer PDF is refused rather than tying a worker up for the whole queue timeout
DEFAULT_MAX_PAGES = 1000
#: characters of text kept per document (about 1,000 dense pages); extraction stops there
DEFAULT_MAX_TEXT_CHARS = 2_000_000
#: characters of text sent to an HTTP provider: about 6,000 tokens, inside every common model's window
DEFAULT_ANALYSIS_MAX_CHARS = 24_000
#: seconds per HTTP request to the analysis provider (a long summary takes a while to generate)
DEFAULT_ANALYSIS_TIMEOUT = 120.0


@dataclass(frozen=True)
class DocumentSettings:
    """What the documents queue reads from the environment."""

    max_bytes: int = DEFAULT_MAX_BYTES  #: DOCUMENTS_MAX_BYTES
    max_pages: int = DEFAULT_MAX_PAGES  #: DOCUMENTS_MAX_PAGES
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS  #: DOCUMENTS_MAX_TEXT_CHARS
    provider: str = DEFAULT_PROVIDER  #: DOCUMENTS_ANALYSIS_PROVIDER
    analysis_max_chars: int = DEFAULT_ANALYSIS_MAX_CHARS  #: DOCUMENTS_ANALYSIS_MAX_CHARS
    analysis_timeout: float = DEFAULT_ANALYSIS_TIMEOUT  #: DOCUMENTS_ANALYSIS_TIMEOUT
    api_url: str | None = None  #: OPENAI_API_URL: base URL of an OpenAI-compatible server
    api_key: str | None = field(default=None, repr=False)  #: OPENAI_API_KEY: a bearer token, never printed
    model: str = DEFAULT_OPENAI_MODEL  #: OPENAI_MODEL

    @classmethod
    def from_env(cls, env: dict | None = None) -> DocumentSettings:
        """Read and check the DOCUMENTS_* and OPENAI_* variables.

        Raises:
            ConfigError: a variable holds an invalid value, or the openai provider has no OPENAI_API_URL.
        """
        env = environment(env)
        raw_provider = env.get("DOCUMENTS_ANALYSIS_PROVIDER") or DEFAULT_PROVIDER
        provider = raw_provider.strip().lower()
        if provider not in PROVIDERS:
            raise ConfigError(
                f"DOCUMENTS_ANALYSIS_PROVIDER={raw_provider!r} is not a provider; use one of {', '.join(PROVIDERS)}"
            )
        api_url = env_url(env, "OPENAI_API_URL", ("http", "https"))
        if provider == "openai" and not api_url:
            raise ConfigError("OPENAI_API_URL must be set for DOCUMENTS_ANALYSIS_PROVIDER=openai (e.g. http://host:8000)")
        return cls(
            max_bytes=int(env_number(env, "DOCUMENTS_MAX_BYTES", DEFAULT_MAX_BYTES, 1024, 1024**3, "bytes")),
            max_pages=int(env_number(env, "DOCUMENTS_MAX_PAGES", DEFAULT_MAX_PAGES, 1, 100_000, "pages")),
            max_text_chars=int(env_number(env, "DOCUMENTS_MAX_TEXT_CHARS", DEFAULT_MAX_TEXT_CHARS, 1000,
                                          100_000_000, "characters")),
            provider=provider,
            analysis_max_chars=int(env_number(env, "DOCUMENTS_ANALYSIS_MAX_CHARS", DEFAULT_ANALYSIS_MAX_CHARS, 500,
                                              1_000_000, "characters")),
            analysis_timeout=env_number(env, "DOCUMENTS_ANALYSIS_TIMEOUT", DEFAULT_ANALYSIS_TIMEOUT, 1, 600,
                                        "seconds"),
            api_url=api_url,
            api_key=(env.get("OPENAI_API_KEY") or "").strip() or None,
            model=(env.get("OPENAI_MODEL") or "").strip() or DEFAULT_OPENAI_MODEL,
        )
