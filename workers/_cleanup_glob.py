"""Redis glob patterns for the cache cleanup: what a namespace pattern matches, and which patterns are safe.

Redis matches SCAN's MATCH with its own glob (`*`, `?`, `[abc]`, `[^abc]`, `[a-z]`, `\\x`), on bytes. The cleanup
double-checks every key SCAN returns against the same pattern here, and refuses patterns that could reach keys it
must never touch: RQ's `rq:` keys and bullrq's own `bullrq:` keys other than the cache's `bullrq:cache:`.
"""

from __future__ import annotations

import re

#: the only part of bullrq's key space the cleanup may touch
CACHE_PREFIX = b"bullrq:cache:"
#: key prefixes the cleanup never touches: RQ's keys and bullrq's queue keys (outside CACHE_PREFIX)
PROTECTED_PREFIXES = (b"rq:", b"bullrq:")

_META = b"*?["


def is_protected(key: bytes) -> bool:
    """True for a key the cleanup must never remove, whatever pattern matched it."""
    if key.startswith(CACHE_PREFIX):
        return False
    return key.startswith(PROTECTED_PREFIXES)


def literal_prefix(pattern: str) -> bytes:
    """The fixed start of `pattern`: the bytes every matching key begins with (escapes resolved)."""
    raw = pattern.encode()
    out = bytearray()
    i = 0
    while i < len(raw):
        char = raw[i : i + 1]
        if char in (b"*", b"?", b"["):
            break
        if char == b"\\" and i + 1 < len(raw):
            i += 1
            char = raw[i : i + 1]
        out += char
        i += 1
    return bytes(out)


def compile_glob(pattern: str) -> re.Pattern[bytes]:
    """A regular expression matching the same keys as the Redis glob `pattern`.

    Raises:
        ValueError: the pattern has an unclosed or empty `[...]` class.
    """
    raw = pattern.encode()
    parts: list[bytes] = []
    i = 0
    while i < len(raw):
        char = raw[i : i + 1]
        if char == b"*":
            parts.append(b".*")
        elif char == b"?":
            parts.append(b".")
        elif char == b"[":
            klass, i = _char_class(raw, i)
            parts.append(klass)
        elif char == b"\\" and i + 1 < len(raw):
            i += 1
            parts.append(re.escape(raw[i : i + 1]))
        else:
            parts.append(re.escape(char))
        i += 1
    return re.compile(b"".join(parts), re.DOTALL)


def _char_class(raw: bytes, start: int) -> tuple[bytes, int]:
    """The regex class for the `[...]` at `start`, and the index of its closing `]`."""
    i = start + 1
    negate = raw[i : i + 1] == b"^"
    if negate:
        i += 1
    items: list[bytes] = []
    while i < len(raw) and raw[i : i + 1] != b"]":
        char = raw[i : i + 1]
        if char == b"\\" and i + 1 < len(raw):
            i += 1
            items.append(re.escape(raw[i : i + 1]))
        elif raw[i + 1 : i + 2] == b"-" and i + 2 < len(raw) and raw[i + 2 : i + 3] != b"]":
            low, high = sorted((raw[i : i + 1], raw[i + 2 : i + 3]))
            items.append(re.escape(low) + b"-" + re.escape(high))
            i += 2
        else:
            items.append(re.escape(char))
        i += 1
    if i >= len(raw):
        raise ValueError("has an unclosed '['")
    if not items:
        raise ValueError("has an empty '[]'")
    return b"[" + (b"^" if negate else b"") + b"".join(items) + b"]", i


def pattern_problem(pattern: str) -> str | None:
    """Why `pattern` may not be a cleanup namespace, or None when it is safe.

    A namespace pattern must start with a fixed prefix ending in ':' (e.g. `bullrq:cache:*`), so it names one
    namespace and never the whole key space, and that prefix must not reach RQ's or bullrq's own keys.
    """
    if not pattern or pattern != pattern.strip():
        return "is empty or has surrounding spaces"
    try:
        compile_glob(pattern)
    except ValueError as exc:
        return str(exc)
    prefix = literal_prefix(pattern)
    if not prefix.endswith(b":"):
        return "must begin with a fixed namespace ending in ':' (e.g. 'bullrq:cache:*')"
    if is_protected(prefix):
        return "reaches RQ's or bullrq's queue keys (under 'bullrq:' only 'bullrq:cache:' may be cleaned)"
    return None
