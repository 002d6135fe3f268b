"""The `hashing` embeddings provider: a dependency-free lexical embedding for offline use.

Each text becomes its word unigrams and bigrams (Unicode words, case-folded), each feature is hashed with blake2b
to one of 384 dimensions and a sign (signed feature hashing, so collisions cancel out on average instead of piling
up), weighted by sublinear term frequency (1 + ln tf) and the vector is L2-normalised. blake2b, unlike `hash()`,
is not salted per process: the same text gives the same vector in every process and on every machine.

This is a lexical baseline, not a semantic model: texts that share words and phrases come out close, synonyms and
paraphrases do not. Use the `openai` or `sentence-transformers` provider when meaning matters.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import unicodedata
from collections import Counter

#: dimensions of every hashing vector (the size of all-MiniLM-L6-v2, so both fit the same downstream code)
DIMENSIONS = 384
#: the model name stored with each vector; bump the version if the features or the hash ever change
MODEL = f"hashing-uni-bigram-{DIMENSIONS}-v1"
#: blake2b personalisation: keeps these hashes apart from any other use of blake2b on the same strings
_PERSON = b"bullrq-embed-v1"
_WORD = re.compile(r"\w+")


def features(text: str) -> Counter:
    """The word unigrams and bigrams of `text` with their counts (a bigram is two words joined by a space)."""
    words = _WORD.findall(unicodedata.normalize("NFKC", text).casefold())
    counts = Counter(words)
    counts.update(f"{first} {second}" for first, second in zip(words, words[1:], strict=False))
    return counts


@functools.lru_cache(maxsize=1 << 16)
def _slot(feature: str) -> tuple[int, float]:
    """The dimension and sign of one feature (cached: the same words come back in every document)."""
    value = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8, person=_PERSON).digest(), "little")
    return value % DIMENSIONS, (1.0 if value >> 63 == 0 else -1.0)


def embed_text(text: str) -> list[float]:
    """The unit-length hashing vector of `text` (all zeros when it has no word at all)."""
    vector = [0.0] * DIMENSIONS
    for feature, count in features(text).items():
        index, sign = _slot(feature)
        vector[index] += sign * (1.0 + math.log(count))
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm else vector


class HashingProvider:
    """Feature hashing of unigrams and bigrams into 384 dimensions; needs nothing outside the standard library."""

    name = "hashing"
    model = MODEL

    def embed(self, texts: list[str]) -> list[list[float]]:
        return [embed_text(text) for text in texts]
