"""schedules.yaml: parses, unique ids, declared queues, valid 5-field crons and zones."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import yaml
from croniter import croniter

from app.config import PROJECT_ROOT
from queues import QUEUES

FIELDS = {"id", "task", "queue", "cron", "timezone", "args", "enabled", "description", "max_runtime", "catch_up"}
REQUIRED = {"id", "task", "queue", "cron", "args", "enabled", "description"}


def entries() -> list[dict]:
    return yaml.safe_load((PROJECT_ROOT / "schedules.yaml").read_text())["schedules"]


def test_entries_have_known_fields_and_the_required_ones():
    assert entries()
    for entry in entries():
        assert REQUIRED <= set(entry) <= FIELDS, entry
        assert isinstance(entry["args"], dict), entry["id"]
        assert isinstance(entry["enabled"], bool), entry["id"]
        assert "." in entry["task"], entry["id"]
        if "timezone" in entry:
            ZoneInfo(entry["timezone"])  # raises for a name that is not an IANA zone


def test_ids_are_unique():
    ids = [entry["id"] for entry in entries()]
    assert len(ids) == len(set(ids))


def test_queues_are_declared():
    assert {entry["queue"] for entry in entries()} <= set(QUEUES)


def test_crons_are_valid_five_field_expressions():
    for entry in entries():
        assert len(entry["cron"].split()) == 5, entry["id"]
        assert croniter.is_valid(entry["cron"]), entry["id"]


def test_the_spec_defaults_are_present():
    crons = {entry["task"]: entry["cron"] for entry in entries()}
    assert crons == {
        "sync.scheduled": "0 */6 * * *",
        "reports.weekly": "0 23 * * 0",
        "cache.cleanup": "0 2 * * *",
        "cache.ai_cleanup": "0 3 * * *",
        "harvest.run": "0 2 * * *",
        "embeddings.generate": "0 1 * * 6",
        "system.retention_cleanup": "0 3 * * *",
        "system.update_stats": "0 4 * * 0",
    }
