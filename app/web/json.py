"""JSON for the API: times as ISO 8601 (Flask's default would write HTTP dates)."""

from __future__ import annotations

from datetime import date, datetime

from flask.json.provider import DefaultJSONProvider


class ApiJSONProvider(DefaultJSONProvider):
    @staticmethod
    def default(value):
        if isinstance(value, datetime | date):
            return value.isoformat()
        return DefaultJSONProvider.default(value)
