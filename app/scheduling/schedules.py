"""Recurring entries declared in `schedules.yaml`, validated as a whole before the scheduler uses any of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from app.errors import BullrqError, InvalidJobError, UnknownQueueError, UnknownTaskError
from app.scheduling.cron import Cron, CronError, parse_zone
from app.tasks import get_queue_spec, get_task

#: seconds a run may go on before it is declared stuck (2 h)
DEFAULT_MAX_RUNTIME = 7200
_FIELDS = {"id", "task", "queue", "cron", "timezone", "args", "enabled", "description", "max_runtime", "catch_up"}


class ScheduleError(BullrqError):
    """Raised when schedules.yaml is not valid; the message names the entry and the problem."""


@dataclass(frozen=True)
class ScheduleEntry:
    """One declared recurring entry."""

    id: str
    task: str
    queue: str
    cron: str
    timezone: str
    args: dict = field(default_factory=dict)
    enabled: bool = True
    description: str = ""
    max_runtime: int = DEFAULT_MAX_RUNTIME  #: seconds
    catch_up: bool = True


def load_schedules(path: Path, default_timezone: str = "UTC") -> list[ScheduleEntry]:
    """Read and validate every entry of `path`.

    Raises:
        ScheduleError: the file is unreadable, or an entry has an unknown task or queue, a bad cron or time zone,
            a duplicate id or a field of the wrong type. The message names the entry.
    """
    try:
        document = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ScheduleError(f"{path}: cannot read: {exc}") from None
    raw_entries = document.get("schedules") if isinstance(document, dict) else None
    if raw_entries is None:
        return []
    if not isinstance(raw_entries, list):
        raise ScheduleError(f"{path}: 'schedules' must be a list of entries")
    entries, seen = [], set()
    for position, raw in enumerate(raw_entries, start=1):
        name = raw.get("id") if isinstance(raw, dict) else None
        where = f"{path}: entry {name!r}" if name else f"{path}: entry #{position}"
        try:
            entry = _entry(raw, default_timezone)
        except (ScheduleError, CronError, UnknownTaskError, UnknownQueueError, InvalidJobError) as exc:
            raise ScheduleError(f"{where}: {exc}") from None
        if entry.id in seen:
            raise ScheduleError(f"{where}: duplicate id")
        seen.add(entry.id)
        entries.append(entry)
    return entries


def _entry(raw, default_timezone: str) -> ScheduleEntry:
    if not isinstance(raw, dict):
        raise ScheduleError("must be a mapping of fields")
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise ScheduleError(f"unknown field {unknown[0]!r}; fields: {', '.join(sorted(_FIELDS))}")
    for required in ("id", "task", "cron"):
        if not isinstance(raw.get(required), str) or not raw[required].strip():
            raise ScheduleError(f"'{required}' is required and must be a string")
    task = get_task(raw["task"])
    queue = raw.get("queue") or task.queue
    if queue is None:
        raise ScheduleError(f"task {task.name} runs on any queue: set 'queue'")
    get_queue_spec(queue)
    if task.queue is not None and queue != task.queue:
        raise ScheduleError(f"task {task.name} runs only on queue {task.queue!r}, not {queue!r}")
    timezone = raw.get("timezone") or default_timezone
    parse_zone(timezone)
    cron = Cron(raw["cron"], timezone)
    args = raw.get("args") or {}
    if not isinstance(args, dict):
        raise ScheduleError("'args' must be a mapping")
    task.bind(args)  # the handler accepts them (InvalidJobError otherwise)
    max_runtime = raw.get("max_runtime", DEFAULT_MAX_RUNTIME)
    if isinstance(max_runtime, bool) or not isinstance(max_runtime, int) or max_runtime <= 0:
        raise ScheduleError("'max_runtime' must be a positive number of seconds")
    for flag in ("enabled", "catch_up"):
        if flag in raw and not isinstance(raw[flag], bool):
            raise ScheduleError(f"'{flag}' must be true or false")
    return ScheduleEntry(
        id=raw["id"].strip(),
        task=task.name,
        queue=queue,
        cron=cron.expression,
        timezone=timezone,
        args=args,
        enabled=raw.get("enabled", True),
        description=str(raw.get("description", "")),
        max_runtime=max_runtime,
        catch_up=raw.get("catch_up", True),
    )
