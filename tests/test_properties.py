"""Property tests (hypothesis): cron fire times in any zone, and job option parsing, over generated inputs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.errors import InvalidJobError, UnknownQueueError
from app.runtime.enqueue import JobOptions, retry_intervals
from app.scheduling.cron import Cron
from queues import QUEUES

ZONES = ["UTC", "Europe/Lisbon", "America/Sao_Paulo", "America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu",
         "Pacific/Chatham", "Europe/London", "America/St_Johns", "Antarctica/Troll"]  # fmt: skip
MOMENTS = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2037, 12, 31), timezones=st.just(UTC))
#: moments within a few hours of Antarctica/Troll's changes (its spring-forward gap lasts two hours)
NEAR_TROLL_CHANGES = st.builds(
    lambda year, spring, minutes: _last_sunday(year, 3 if spring else 10) + timedelta(hours=1, minutes=minutes),
    st.integers(2006, 2037), st.booleans(), st.integers(-300, 300),
)
PROFILE = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def _last_sunday(year: int, month: int) -> datetime:
    day = datetime(year, month + 1, 1, tzinfo=UTC) - timedelta(days=1)
    return (day - timedelta(days=(day.weekday() + 1) % 7)).replace(hour=0)


@st.composite
def crons(draw) -> str:
    minute = draw(st.sampled_from(["*", "0", "30", "*/15", "5,35", str(draw(st.integers(0, 59)))]))
    hour = draw(st.sampled_from(["*", "2", "3", "*/6", "0-5", str(draw(st.integers(0, 23)))]))
    dom = draw(st.sampled_from(["*", "*", "1", "15", "28"]))
    month = draw(st.sampled_from(["*", "*", "*", "1", "3", "10", "11"]))
    dow = "*" if dom != "*" else draw(st.sampled_from(["*", "0", "6", "1-5"]))
    return f"{minute} {hour} {dom} {month} {dow}"


def _matches(expression: str, wall: datetime) -> bool:
    """Whether wall-clock time `wall` satisfies every field of a 5-field expression (our generated subset)."""
    values = (wall.minute, wall.hour, wall.day, wall.month, (wall.weekday() + 1) % 7)
    return all(_field_ok(field, value) for field, value in zip(expression.split(), values, strict=True))


def _field_ok(field: str, value: int) -> bool:
    for part in field.split(","):
        base, _, step = part.partition("/")
        low, high = (0, 59) if base == "*" else (int(base.split("-")[0]), int(base.split("-")[-1]))
        if low <= value <= high and (value - low) % int(step or 1) == 0:
            return True
    return False


@PROFILE
@given(expression=crons(), zone=st.sampled_from(ZONES), moment=MOMENTS)
def test_next_fire_is_later_on_the_wall_clock_and_nothing_between_is_skipped(expression, zone, moment):
    cron = Cron(expression, zone)
    first = cron.next_after(moment)
    second = cron.next_after(first)
    assert moment < first < second
    tz = ZoneInfo(zone)
    wall = first.astimezone(tz).replace(tzinfo=None)
    # the fire time is a matching wall time, or (inside a spring-forward gap) lands just past the gap
    gap_shift = (first.astimezone(tz).utcoffset() - (first - timedelta(hours=3)).astimezone(tz).utcoffset())
    assert _matches(expression, wall) or _matches(expression, wall - gap_shift), (expression, zone, wall)


@PROFILE
@given(expression=crons(), moment=NEAR_TROLL_CHANGES)
def test_across_a_two_hour_gap_the_fires_are_exactly_the_matching_wall_times_placed_once(expression, moment):
    """Against the definition: every matching wall time, placed by the documented rule, fires once and in order."""
    zone = ZoneInfo("Antarctica/Troll")
    cron, fired = Cron(expression, "Antarctica/Troll"), [moment]
    for _ in range(4):
        fired.append(cron.next_after(fired[-1]))
    walls = croniter(expression, (moment - timedelta(hours=1)).replace(tzinfo=None), ret_type=datetime)
    expected = set()
    while (wall := walls.get_next(datetime)) <= (fired[-1] + timedelta(hours=3)).replace(tzinfo=None):
        instant = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
        if moment < instant <= fired[-1]:
            expected.add(instant)
    assert fired[1:] == sorted(expected), (expression, moment)


@PROFILE
@given(expression=crons(), zone=st.sampled_from(ZONES), moment=st.one_of(MOMENTS, NEAR_TROLL_CHANGES))
def test_no_matching_minute_is_skipped_in_the_next_two_days(expression, zone, moment):
    """Walk minute by minute (in UTC, so every instant once) up to the first fire: no earlier instant matches on an
    unambiguous wall clock."""
    cron = Cron(expression, zone)
    first = cron.next_after(moment)
    tz = ZoneInfo(zone)
    probe = moment.replace(second=0, microsecond=0) + timedelta(minutes=1)
    limit = min(first, moment + timedelta(days=2))
    while probe < limit:
        local = probe.astimezone(tz)
        wall = local.replace(tzinfo=None)
        first_occurrence = wall.replace(tzinfo=tz, fold=0).astimezone(UTC) == probe
        assert not (first_occurrence and _matches(expression, wall)), (expression, zone, probe, first)
        probe += timedelta(minutes=1)


OPTION_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**9), st.floats(allow_nan=True),
                          st.text(max_size=30), st.lists(st.integers(), max_size=3),
                          st.dictionaries(st.text(max_size=8), st.integers(), max_size=3))  # fmt: skip
OPTION_NAMES = st.sampled_from(["queue", "priority", "delay", "attempts", "backoff", "timeout", "jobId", "colour"])


@settings(max_examples=400, deadline=None, derandomize=True)
@given(raw=st.one_of(st.dictionaries(OPTION_NAMES, OPTION_VALUES, max_size=5), OPTION_VALUES))
def test_job_options_parse_or_refuse_with_a_message_never_crash(raw):
    try:
        options = JobOptions.parse(raw)
    except (InvalidJobError, UnknownQueueError) as exc:  # both answer 400 over HTTP
        assert str(exc)  # a message for the caller
        return
    assert options.queue is None or options.queue in QUEUES
    assert options.priority is None or 1 <= options.priority <= 10
    assert options.attempts is None or options.attempts >= 1
    assert options.delay is None or options.delay >= 0


@settings(max_examples=200, deadline=None, derandomize=True)
@given(kind=st.sampled_from(["fixed", "exponential"]), delay=st.floats(0, 3600), retries=st.integers(0, 20))
def test_retry_intervals_are_whole_non_negative_seconds_one_per_retry(kind, delay, retries):
    backoff = JobOptions.parse({"backoff": {"type": kind, "delay": delay}}).backoff
    intervals = retry_intervals(backoff, retries)
    assert len(intervals) == retries and all(isinstance(i, int) and i >= 0 for i in intervals)
    if kind == "exponential" and retries > 1 and delay >= 10:
        assert intervals[-1] > intervals[0]  # grows despite the jitter of +-20 %
