"""JSON for the API: times as ISO 8601 (Flask's default would write HTTP dates), and strict parsing of what comes in:
no NaN or Infinity (not JSON; PostgreSQL's jsonb and every other client refuse them) and no nesting past
MAX_DEPTH (Python's parser would hit its recursion limit)."""

from __future__ import annotations

import json
import math
from datetime import date, datetime

from flask.json.provider import DefaultJSONProvider

#: levels of arrays and objects a request body may nest
MAX_DEPTH = 64


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON value")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 reads as Infinity
        raise ValueError(f"{text} is out of range for a JSON number")
    return value


def _check_depth(value) -> None:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > MAX_DEPTH:
            raise ValueError(f"JSON nested deeper than {MAX_DEPTH} levels")
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))


def strict_loads(text: str | bytes, **kwargs):
    """`json.loads` refusing NaN, Infinity and nesting deeper than MAX_DEPTH.

    Raises:
        ValueError: the text is not such JSON.
    """
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite, **kwargs)
    except RecursionError:
        raise ValueError(f"JSON nested deeper than {MAX_DEPTH} levels") from None
    if isinstance(value, dict | list):
        _check_depth(value)
    return value


class ApiJSONProvider(DefaultJSONProvider):
    @staticmethod
    def default(value):
        if isinstance(value, datetime | date):
            return value.isoformat()
        return DefaultJSONProvider.default(value)

    def loads(self, s: str | bytes, **kwargs):
        return strict_loads(s, **kwargs)
