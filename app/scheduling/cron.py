"""Cron expressions read in a time zone, with well-defined behaviour on daylight-saving days.

Expressions have 5 fields (minute hour day-of-month month day-of-week) or 6 with seconds first, as in BullMQ.
Fire times are computed on the zone's wall clock, then placed on the timeline:
- a wall time that does not exist (the spring-forward gap) fires at the same distance past the gap (02:30 on a
  day the clock jumps from 02:00 to 03:00 fires at 03:30), so a daily entry still fires once that day, whatever
  the gap's length (Antarctica/Troll jumps two hours);
- a wall time that happens twice (fall-back) fires at its first occurrence only.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from app.errors import BullrqError


class CronError(BullrqError):
    """Raised when a cron expression or time zone is not valid; the message says which and why."""


def parse_zone(name: str) -> ZoneInfo:
    """The IANA zone `name`.

    Raises:
        CronError: it is not a known zone.
    """
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError, OSError):  # OSError: a name too long for a file name
        raise CronError(f"unknown time zone {name!r} (use an IANA name such as UTC or Europe/Lisbon)") from None


class Cron:
    """A cron expression in a time zone."""

    def __init__(self, expression: str, timezone: str = "UTC"):
        if not isinstance(expression, str):
            raise CronError(f"cron must be a string, not {type(expression).__name__}")
        fields = expression.split()
        if len(fields) not in (5, 6):
            raise CronError(f"cron {expression!r} must have 5 fields, or 6 with seconds first")
        self.with_seconds = len(fields) == 6
        if not croniter.is_valid(expression, second_at_beginning=self.with_seconds):
            raise CronError(f"cron {expression!r} is not a valid expression")
        self.expression = " ".join(fields)
        self.timezone = timezone
        self.zone = parse_zone(timezone)
        try:  # valid field by field, yet a date that never comes (`0 0 31 2 *`: February 31st)
            croniter(self.expression, datetime(2000, 1, 1), second_at_beginning=self.with_seconds).get_next(datetime)
        except CroniterError:
            raise CronError(f"cron {expression!r} never fires (no such date)") from None

    def next_after(self, moment: datetime) -> datetime:
        """The first fire time strictly after `moment` (aware), in UTC.

        Wall times map to instants out of order inside a spring-forward gap (on a day with a two-hour gap, a wall
        time inside it lands after wall times that follow the gap), so the walk starts early enough to see the gap
        and goes on until no later wall time can land earlier than the best instant found.
        """
        moment = moment.astimezone(UTC)
        now_offset = self._offset(moment)
        low = now_offset
        earlier = self._offset(moment - timedelta(days=1))
        if earlier < now_offset and self._offset(moment - (now_offset - earlier)) == earlier:
            low = earlier  # a gap ended less than its own length ago: its wall times may still land after `moment`
        high = max(now_offset, self._offset(moment + timedelta(days=1)))
        walker = croniter(
            self.expression, (moment + low).replace(tzinfo=None), second_at_beginning=self.with_seconds,
            ret_type=datetime,
        )  # fmt: skip
        best = None
        for _ in range(100_000):
            wall = walker.get_next(datetime)
            if best is not None and wall - high >= best.replace(tzinfo=None):
                return best  # every later wall time lands at or after `wall - high`
            instant = _place(wall, self.zone)
            if instant > moment and (best is None or instant < best):
                best = instant
                high = max(high, *(self._offset(best + timedelta(days=d)) for d in (-1, 0, 1)))
        if best is not None:
            return best
        raise CronError(f"cron {self.expression!r} has no fire time after {moment.isoformat()}")

    def _offset(self, instant: datetime) -> timedelta:
        """The zone's UTC offset at `instant`."""
        return instant.astimezone(self.zone).utcoffset()

    def __repr__(self) -> str:
        return f"Cron({self.expression!r}, {self.timezone!r})"


def _place(wall: datetime, zone: ZoneInfo) -> datetime:
    """The instant of wall-clock time `wall` in `zone`, in UTC.

    fold=0 reads a repeated wall time as its first occurrence, and a wall time inside a gap with the offset from
    before the jump, which lands past the gap by the same distance: the behaviour documented above.
    """
    return wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
