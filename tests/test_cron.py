"""Cron fire times in a time zone, on ordinary and daylight-saving days."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from app.scheduling.cron import Cron, CronError


def fires(cron: Cron, start: datetime, count: int) -> list[datetime]:
    out, moment = [], start
    for _ in range(count):
        moment = cron.next_after(moment)
        out.append(moment)
    return out


def local(moments, cron):
    return [m.astimezone(cron.zone).strftime("%m-%d %H:%M:%S %Z") for m in moments]


def test_fires_in_its_own_time_zone():
    cron = Cron("0 23 * * 0", "America/Sao_Paulo")  # Sunday 23:00 in Brazil is Monday 02:00 UTC
    assert cron.next_after(datetime(2026, 11, 20, tzinfo=UTC)) == datetime(2026, 11, 23, 2, tzinfo=UTC)


def test_seconds_field_first():
    cron = Cron("*/15 * * * * *")
    assert fires(cron, datetime(2026, 1, 1, tzinfo=UTC), 3) == [
        datetime(2026, 1, 1, 0, 0, 15, tzinfo=UTC), datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC),
        datetime(2026, 1, 1, 0, 0, 45, tzinfo=UTC),
    ]  # fmt: skip


def test_spring_forward_day_fires_once_past_the_gap():
    cron = Cron("30 2 * * *", "America/New_York")  # 2026-03-08: 02:00 jumps to 03:00
    got = local(fires(cron, datetime(2026, 3, 7, 12, tzinfo=UTC), 3), cron)
    assert got == ["03-08 03:30:00 EDT", "03-09 02:30:00 EDT", "03-10 02:30:00 EDT"]


def test_fall_back_day_fires_once_at_the_first_occurrence():
    cron = Cron("30 1 * * *", "America/New_York")  # 2026-11-01: 02:00 falls back to 01:00
    got = local(fires(cron, datetime(2026, 10, 31, 12, tzinfo=UTC), 3), cron)
    assert got == ["11-01 01:30:00 EDT", "11-02 01:30:00 EST", "11-03 01:30:00 EST"]


@pytest.mark.parametrize(
    "zone, week_of_a_change",
    [
        ("Europe/Lisbon", (3, 26)), ("Europe/Lisbon", (10, 22)), ("America/New_York", (3, 5)),
        ("America/New_York", (10, 29)), ("Australia/Sydney", (4, 2)), ("Australia/Sydney", (10, 1)),
    ],
)  # fmt: skip
def test_every_quarter_hour_around_a_change_is_strictly_increasing_and_never_doubles(zone, week_of_a_change):
    cron = Cron("*/15 * * * *", zone)
    moments = fires(cron, datetime(2026, *week_of_a_change, tzinfo=UTC), 4 * 24 * 7)
    assert all(b > a for a, b in zip(moments, moments[1:], strict=False))
    walls = [m.astimezone(cron.zone).replace(tzinfo=None) for m in moments]
    assert len(walls) == len(set(walls))  # a repeated wall-clock hour fires once


@pytest.mark.parametrize(
    "expression, zone, message",
    [("61 * * * *", "UTC", "not a valid"), ("* * *", "UTC", "5 fields"), ("0 3 * * *", "Nowhere/City", "time zone")],
)
def test_bad_input_is_refused(expression, zone, message):
    with pytest.raises(CronError, match=message):
        Cron(expression, zone)


def _expected(expression: str, zone: str, start: datetime, end: datetime) -> list[datetime]:
    """Every matching wall-clock minute between `start` and `end`, placed on the timeline by the documented rule
    (a wall time in a gap at the offset from before the jump, a repeated one at its first occurrence), once each."""
    tz = ZoneInfo(zone)
    offsets = [moment.astimezone(tz).utcoffset() for moment in (start, end)]
    walker = croniter(expression, (start + min(offsets)).replace(tzinfo=None), ret_type=datetime)
    last = (end + max(offsets)).replace(tzinfo=None)
    out = set()
    while (wall := walker.get_next(datetime)) <= last:
        instant = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
        if start < instant <= end:
            out.add(instant)
    return sorted(out)


@pytest.mark.parametrize("expression", ["* * * * *", "*/15 * * * *", "0 * * * *", "30 1,2,3 * * *", "45 0-4 * * *"])
@pytest.mark.parametrize(
    "zone, change",
    [
        ("Antarctica/Troll", datetime(2026, 3, 29, 1, tzinfo=UTC)),  # 01:00 jumps to 03:00 (a two-hour gap)
        ("Antarctica/Troll", datetime(2026, 10, 25, 1, tzinfo=UTC)),  # 03:00 falls back to 01:00
        ("Australia/Lord_Howe", datetime(2026, 10, 3, 15, 30, tzinfo=UTC)),  # a half-hour gap
        ("America/New_York", datetime(2026, 3, 8, 7, tzinfo=UTC)),
    ],
)  # fmt: skip
def test_no_slot_is_skipped_or_doubled_across_a_change_of_any_length(expression, zone, change):
    start, end = change - timedelta(hours=3), change + timedelta(hours=3)
    cron, moment, got = Cron(expression, zone), start, []
    while (moment := cron.next_after(moment)) <= end:
        got.append(moment)
    assert got == _expected(expression, zone, start, end)
