"""Settings read from the environment (and `.env`), shared by the web app, workers, scheduler and CLI.

This module must not import Flask: worker processes and scripts read the same settings.

Resolution order for the servers: an explicit URL in the environment, then the URL that the embedded servers
of the run directory published (see `app.local.servers`), then the conventional localhost default.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dotenv import dotenv_values

from app import sentinel
from app.errors import ConfigError

#: the repository root: where queues.py, schedules.yaml and the default run directory live
PROJECT_ROOT = Path(__file__).resolve().parent.parent

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_DATABASE_URL = "postgresql://localhost:5432/bullrq"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class RunDir:
    """Paths inside the run directory (`var/` by default, moved by `BULLRQ_HOME`)."""

    root: Path

    @property
    def pids(self) -> Path:
        return self.root / "pids"

    @property
    def worker_logs(self) -> Path:
        return self.root / "logs" / "workers"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def redis(self) -> Path:
        return self.root / "redis"

    @property
    def postgres(self) -> Path:
        return self.root / "postgres"

    @property
    def redis_url_file(self) -> Path:
        """Written by the embedded Redis while it runs, so the CLI finds it."""
        return self.redis / "url"

    @property
    def database_url_file(self) -> Path:
        """Written by the embedded PostgreSQL while it runs, so the CLI finds it."""
        return self.postgres / "url"

    @property
    def token_file(self) -> Path:
        return self.root / "admin_token"

    def pid_file(self, name: str) -> Path:
        return self.pids / f"{name}.pid"

    def worker_log(self, name: str) -> Path:
        return self.worker_logs / f"{name}.log"


@dataclass(frozen=True)
class Settings:
    """Every setting of the product, validated."""

    redis_url: str
    redis_url_source: str  # "env", "run-dir" or "default": the CLI says where it looked
    database_url: str
    database_url_source: str
    admin_token: str | None
    debug: bool
    timezone: str
    home: RunDir
    log_format: str  # "text" or "json"
    history: bool  # record every run in PostgreSQL (BULLRQ_HISTORY)
    run_retention_days: float  # history rows older than this are deleted (BULLRQ_RUN_RETENTION_DAYS)
    job_retention_days: float  # ended jobs older than this leave Redis (BULLRQ_JOB_RETENTION_DAYS)
    schedules_file: Path  # the recurring entries (BULLRQ_SCHEDULES, default schedules.yaml)
    allow_eviction: bool = False  # workers start on a Redis whose maxmemory-policy evicts (BULLRQ_ALLOW_EVICTION)
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def environment(environ: dict | None = None) -> dict:
    """The process environment over the values of `.env` (the environment wins, as with docker and foreman)."""
    if environ is not None:
        return dict(environ)
    dotenv_path = Path(os.environ.get("BULLRQ_DOTENV", PROJECT_ROOT / ".env"))
    merged = {k: v for k, v in dotenv_values(dotenv_path).items() if v is not None} if dotenv_path.is_file() else {}
    merged.update(os.environ)
    return merged


def env_bool(env: dict, name: str, default: bool) -> bool:
    """The boolean in `name` (`default` when unset)."""
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean (use 1/0, true/false, yes/no, on/off)")


def env_number(env: dict, name: str, default: float, low: float, high: float, unit: str = "") -> float:
    """The number in `name` (`default` when unset), which must lie within [low, high]."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ConfigError(f"{name}={raw!r} is not a number {f'of {unit} ' if unit else ''}from {low:g} to {high:g}")
    return value


#: bytes: the defaults of MAX_REQUEST_BYTES (a request body) and MAX_JOB_DATA_BYTES (a job's data, as JSON)
DEFAULT_MAX_REQUEST_BYTES = 1024 * 1024
DEFAULT_MAX_JOB_DATA_BYTES = 256 * 1024


class SizeLimits(NamedTuple):
    """Bytes a request body (413 beyond, before the app reads it) and a job's data may hold."""

    max_request_bytes: int
    max_job_data_bytes: int


def size_limits(environ: dict | None = None) -> SizeLimits:
    """MAX_REQUEST_BYTES and MAX_JOB_DATA_BYTES, validated (a job's data never needs more than a body holds)."""
    env = environment() if environ is None else environ
    body = int(env_number(env, "MAX_REQUEST_BYTES", DEFAULT_MAX_REQUEST_BYTES, 1024, 2**30, "bytes"))
    data = int(env_number(env, "MAX_JOB_DATA_BYTES", min(DEFAULT_MAX_JOB_DATA_BYTES, body), 2, 2**30, "bytes"))
    return SizeLimits(body, data)


def env_url(env: dict, name: str, schemes: tuple[str, ...]) -> str | None:
    """The URL in `name` (None when unset), whose scheme must be one of `schemes`."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    scheme = raw.split("://", 1)[0] if "://" in raw else ""
    if scheme not in schemes:
        raise ConfigError(f"{name}={redact(raw)!r} is not a URL with scheme {' or '.join(schemes)}")
    return raw


def redact(url: str) -> str:
    """The URL with its passwords replaced, for messages (secrets are never printed).

    Everything up to the last `@` counts as the password: better too much hidden than the tail of a password
    holding an unescaped `@`.
    """
    url = re.sub(rf"([?&]{sentinel.PASSWORD_PARAM}=)[^&]*", r"\1***", url)
    return re.sub(r"(://[^:/@]*:).*@", r"\1***@", url)


def _published(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def env_redis_url(env: dict, name: str) -> str | None:
    """The Redis URL in `name` (None when unset): redis://, rediss://, unix:// or a well-formed redis+sentinel://.

    Raises:
        ConfigError: naming the variable, at start-up rather than at the first command.
    """
    url = env_url(env, name, ("redis", "rediss", "unix", sentinel.SCHEME))
    if url and sentinel.is_sentinel_url(url):
        try:
            sentinel.parse(url)
        except ConfigError as exc:
            raise ConfigError(f"{name}: {exc}") from None
    return url


def _redis_url(env: dict, home: RunDir) -> tuple[str, str]:
    url = env_redis_url(env, "REDIS_URL")
    if url:
        return url, "env"
    db = sentinel.parse_db(env.get("REDIS_DB") or "0", "REDIS_DB")
    password = env.get("REDIS_PASSWORD") or None
    addresses = env.get("REDIS_SENTINELS", "").strip()
    if addresses:
        master = env.get("REDIS_SENTINEL_MASTER", "").strip()
        if not master:
            raise ConfigError("REDIS_SENTINELS is set but REDIS_SENTINEL_MASTER (the name the sentinels watch) is not")
        target = sentinel.SentinelTarget(
            sentinels=sentinel.parse_addresses(addresses, "REDIS_SENTINELS"),
            master=master,
            db=db,
            password=password,
            sentinel_password=env.get("REDIS_SENTINEL_PASSWORD") or None,
        )
        return target.url(), "env"
    host = env.get("REDIS_HOST", "").strip()
    if host:
        port = env.get("REDIS_PORT", "6379").strip()
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"REDIS_PORT={port!r} is not a TCP port number")
        auth = f":{quote(password, safe='')}@" if password else ""
        return f"redis://{auth}{host}:{port}/{db}", "env"
    published = _published(home.redis_url_file)
    if published:
        return published, "run-dir"
    return DEFAULT_REDIS_URL, "default"


def _database_url(env: dict, home: RunDir) -> tuple[str, str]:
    url = env_url(env, "DATABASE_URL", ("postgresql", "postgres"))
    if url:
        return url, "env"
    published = _published(home.database_url_file)
    if published:
        return published, "run-dir"
    return DEFAULT_DATABASE_URL, "default"


def _timezone(env: dict) -> str:
    name = (env.get("BULLRQ_TIMEZONE") or env.get("TZ") or "UTC").strip().lstrip(":")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        variable = "BULLRQ_TIMEZONE" if env.get("BULLRQ_TIMEZONE") else "TZ"
        raise ConfigError(f"{variable}={name!r} is not an IANA time zone (e.g. UTC, Europe/Lisbon)") from None
    return name


def load_settings(environ: dict | None = None) -> Settings:
    """Read and validate the settings.

    Args:
        environ: variables to read instead of the process environment and `.env` (tests pass their own).

    Raises:
        ConfigError: a variable holds an invalid value; the message names it.
    """
    env = environment(environ)
    home_raw = env.get("BULLRQ_HOME", "").strip()
    home = RunDir(Path(home_raw).expanduser().resolve() if home_raw else PROJECT_ROOT / "var")
    redis_url, redis_source = _redis_url(env, home)
    database_url, database_source = _database_url(env, home)
    token = (env.get("ADMIN_TOKEN") or env.get("BULL_BOARD_ACCESS_TOKEN") or "").strip() or None
    if token is not None and len(token) < 16:
        name = "ADMIN_TOKEN" if env.get("ADMIN_TOKEN") else "BULL_BOARD_ACCESS_TOKEN"
        raise ConfigError(f"{name} is too short: use at least 16 characters")
    log_format = env.get("LOG_FORMAT", "text").strip().lower() or "text"
    if log_format not in ("text", "json"):
        raise ConfigError(f"LOG_FORMAT={log_format!r} must be text or json")
    return Settings(
        redis_url=redis_url,
        redis_url_source=redis_source,
        database_url=database_url,
        database_url_source=database_source,
        admin_token=token,
        debug=env_bool(env, "DEBUG", False),
        timezone=_timezone(env),
        home=home,
        log_format=log_format,
        history=env_bool(env, "BULLRQ_HISTORY", True),
        run_retention_days=env_number(env, "BULLRQ_RUN_RETENTION_DAYS", 60, 0.01, 3650, "days"),
        job_retention_days=env_number(env, "BULLRQ_JOB_RETENTION_DAYS", 30, 0.01, 3650, "days"),
        schedules_file=Path(env.get("BULLRQ_SCHEDULES") or PROJECT_ROOT / "schedules.yaml"),
        allow_eviction=env_bool(env, "BULLRQ_ALLOW_EVICTION", False),
    )


def ensure_admin_token(settings: Settings) -> str:
    """The admin token: the configured one, else one generated once and kept in the run directory."""
    if settings.admin_token:
        return settings.admin_token
    path = settings.home.token_file
    existing = _published(path)
    if existing:
        return existing
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    # written whole under a temporary name, then renamed: a crash never leaves an empty token file behind
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    os.replace(partial, path)
    return token

