"""The alert settings: channels, public URL, timing, and each queue's AlertSpec with environment overrides.

Every queue's defaults come from queues.py (`QueueSpec.alerts`); `ALERT_<FIELD>` overrides a field for every queue
and `ALERT_<FIELD>_<QUEUE>` for one (queue name upper-cased, `-` as `_`: `ALERT_BACKLOG_WAITING_CACHE_CLEANUP`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from app.config import env_bool, env_number, env_url, environment
from app.errors import ConfigError
from app.recipients import Recipient, parse_recipient_list
from queues import QUEUES, SYSTEM_ALERTS, AlertSpec, SystemAlertSpec

#: seconds (low, high) each numeric field of AlertSpec and SystemAlertSpec may take; 0 switches a condition off
_SECONDS = (0, 30 * 24 * 3600)
_QUEUE_FIELDS = {
    "failed_window": (1, 7 * 24 * 3600),
    "failure_rate": (0, 1),
    "failure_window": (1, 7 * 24 * 3600),
    "failure_min_runs": (1, 10**9),
    "backlog_waiting": (0, 10**12),
    "backlog_age": _SECONDS,
    "no_worker_after": _SECONDS,
}
_SYSTEM_FIELDS = {
    "no_leader_after": "ALERT_NO_SCHEDULER_AFTER",
    "schedule_late_after": "ALERT_SCHEDULE_LATE_AFTER",
    "history_behind_after": "ALERT_HISTORY_BEHIND_AFTER",
}


@dataclass(frozen=True)
class AlertSettings:
    """Everything the evaluator and the delivery need, validated."""

    enabled: bool  #: this process takes part in evaluating alerts (BULLRQ_ALERTS)
    channels: tuple[Recipient, ...]  #: ALERT_CHANNELS
    public_url: str | None  #: BULLRQ_PUBLIC_URL, without a trailing slash
    interval: float  #: seconds between evaluations
    cooldown: float  #: seconds: a condition that opens again this soon after a message about it waits to be told
    clear_after: float  #: seconds a condition must stay away before its alert clears
    queues: dict[str, AlertSpec]
    system: SystemAlertSpec

    def link(self, path: str) -> str:
        """The URL of page `path` for a message (the path alone when BULLRQ_PUBLIC_URL is unset)."""
        return f"{self.public_url}{path}" if self.public_url else path


def _env_key(queue: str) -> str:
    return queue.upper().replace("-", "_")


def _queue_spec(env: dict, name: str, spec: AlertSpec) -> AlertSpec:
    changes = {}
    for field, (low, high) in _QUEUE_FIELDS.items():
        for variable in (f"ALERT_{field.upper()}", f"ALERT_{field.upper()}_{_env_key(name)}"):
            if env.get(variable, "").strip():
                value = env_number(env, variable, 0, low, high)
                changes[field] = value if field == "failure_rate" else int(value)
    for variable in ("ALERT_FAILED", f"ALERT_FAILED_{_env_key(name)}"):
        if env.get(variable, "").strip():
            changes["failed"] = env_bool(env, variable, True)
    quiet = {t.strip() for t in env.get("ALERT_QUIET_TASKS", "").split(",") if t.strip()}
    if quiet:
        changes["quiet_tasks"] = spec.quiet_tasks | quiet
    return dataclasses.replace(spec, **changes)


def _system_spec(env: dict) -> SystemAlertSpec:
    changes = {field: int(env_number(env, variable, getattr(SYSTEM_ALERTS, field), *_SECONDS, "seconds"))
               for field, variable in _SYSTEM_FIELDS.items()}  # fmt: skip
    changes["schedule_failed"] = env_bool(env, "ALERT_SCHEDULE_FAILED", SYSTEM_ALERTS.schedule_failed)
    return dataclasses.replace(SYSTEM_ALERTS, **changes)


def load_alert_settings(environ: dict | None = None) -> AlertSettings:
    """Read and validate the alert settings.

    Raises:
        ConfigError: a variable holds an invalid value; the message names it.
    """
    env = environment(environ)
    try:
        channels = tuple(parse_recipient_list(env.get("ALERT_CHANNELS", "")))
    except ValueError as exc:
        raise ConfigError(f"ALERT_CHANNELS: {exc}") from None
    public_url = env_url(env, "BULLRQ_PUBLIC_URL", ("http", "https"))
    return AlertSettings(
        enabled=env_bool(env, "BULLRQ_ALERTS", True),
        channels=channels,
        public_url=public_url.rstrip("/") if public_url else None,
        interval=env_number(env, "ALERT_INTERVAL", 15, 0.1, 3600, "seconds"),
        cooldown=env_number(env, "ALERT_COOLDOWN", 900, 0, 7 * 24 * 3600, "seconds"),
        clear_after=env_number(env, "ALERT_CLEAR_AFTER", 120, 0, 7 * 24 * 3600, "seconds"),
        queues={name: _queue_spec(env, name, spec.alerts) for name, spec in QUEUES.items()},
        system=_system_spec(env),
    )
