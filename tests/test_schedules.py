"""schedules.yaml: the shipped file loads; every kind of bad entry stops loading with a message naming it."""

from __future__ import annotations

import pytest

from app.config import PROJECT_ROOT
from app.scheduling.schedules import DEFAULT_MAX_RUNTIME, ScheduleError, load_schedules


def test_the_shipped_file_loads_and_lists_the_spec_defaults():
    shipped = PROJECT_ROOT / "schedules.yaml"
    entries = {entry.id: entry for entry in load_schedules(shipped, default_timezone="Europe/Lisbon")}
    retention = entries["retention-cleanup"]
    assert (retention.task, retention.queue) == ("system.retention_cleanup", "cache-cleanup")
    assert retention.cron == "0 3 * * *"
    assert retention.timezone == "Europe/Lisbon" and retention.max_runtime == DEFAULT_MAX_RUNTIME and retention.catch_up
    # every default of the original systems (SPEC), each on its task's own queue
    declared = {(entry.task, entry.queue, entry.cron) for entry in entries.values() if entry.enabled}
    assert declared == {
        ("sync.scheduled", "sync", "0 */6 * * *"), ("reports.weekly", "reports", "0 23 * * 0"),
        ("cache.cleanup", "cache-cleanup", "0 2 * * *"), ("cache.ai_cleanup", "cache-cleanup", "0 3 * * *"),
        ("harvest.run", "harvest", "0 2 * * *"), ("embeddings.generate", "embeddings", "0 1 * * 6"),
        ("system.retention_cleanup", "cache-cleanup", "0 3 * * *"), ("system.update_stats", "reports", "0 4 * * 0"),
    }  # fmt: skip


def _load(tmp_path, body: str):
    path = tmp_path / "schedules.yaml"
    path.write_text(body)
    return load_schedules(path)


GOOD = """
schedules:
  - id: ping-often
    task: system.ping
    queue: sync
    cron: "*/5 * * * * *"
    timezone: America/New_York
    args: {echo: 1}
    max_runtime: 60
    catch_up: false
"""


def test_a_good_entry(tmp_path):
    [entry] = _load(tmp_path, GOOD)
    assert (entry.cron, entry.timezone, entry.args, entry.max_runtime, entry.catch_up, entry.enabled) == (
        "*/5 * * * * *", "America/New_York", {"echo": 1}, 60, False, True,
    )  # fmt: skip


@pytest.mark.parametrize(
    "change, message",
    [
        (("task: system.ping", "task: nope.nothing"), "entry 'ping-often': unknown task type 'nope.nothing'"),
        (("queue: sync", "queue: nowhere"), "entry 'ping-often': unknown queue 'nowhere'"),
        (("    queue: sync\n", ""), "entry 'ping-often': task system.ping runs on any queue: set 'queue'"),
        (('"*/5 * * * * *"', '"61 * * * *"'), "entry 'ping-often': cron '61 * * * *' is not a valid expression"),
        (('"*/5 * * * * *"', '"* * *"'), "must have 5 fields, or 6 with seconds first"),
        (("America/New_York", "Mars/Olympus"), "entry 'ping-often': unknown time zone 'Mars/Olympus'"),
        (("args: {echo: 1}", "args: {colour: red}"), "entry 'ping-often': data for system.ping"),
        (("max_runtime: 60", "max_runtime: -1"), "'max_runtime' must be a positive number"),
        (("catch_up: false", "catch_up: sometimes"), "'catch_up' must be true or false"),
        (("catch_up: false", "catch_up: false\n    colour: red"), "unknown field 'colour'"),
    ],
)
def test_a_bad_entry_is_named_with_its_problem(tmp_path, change, message):
    with pytest.raises(ScheduleError) as caught:
        _load(tmp_path, GOOD.replace(*change))
    assert message in str(caught.value)
    assert "schedules.yaml" in str(caught.value)


def test_duplicate_ids_are_refused(tmp_path):
    with pytest.raises(ScheduleError, match="entry 'ping-often': duplicate id"):
        _load(tmp_path, GOOD + GOOD.split("schedules:\n", 1)[1])


def test_unreadable_yaml_is_refused(tmp_path):
    with pytest.raises(ScheduleError, match="cannot read"):
        _load(tmp_path, "schedules: [unclosed")
