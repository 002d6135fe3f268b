"""The `sync` queue's settings: its providers (primary, then fallback) and whether run statistics are kept."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote

from app.config import env_bool, env_url, environment
from app.errors import ConfigError

_SCHEMES = ("http", "https")


@dataclass(frozen=True)
class Provider:
    """One provider of records: `primary` or `fallback`."""

    name: str
    base_url: str
    token: str | None = field(default=None, repr=False)

    def item_url(self, external_id: str) -> str:
        return f"{self.base_url.rstrip('/')}/items/{quote(external_id, safe='')}"

    def headers(self) -> dict:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers


@dataclass(frozen=True)
class SyncSettings:
    """The sync queue's settings."""

    providers: tuple[Provider, ...]  #: in the order they are asked: primary, then fallback
    save_stats: bool = True

    @classmethod
    def from_env(cls, env: dict | None = None) -> SyncSettings:
        """The settings from the environment (and `.env`).

        Raises:
            ConfigError: no primary provider, or a value is invalid; the message names the variable.
        """
        env = environment(env)
        primary = env_url(env, "SYNC_PRIMARY_URL", _SCHEMES)
        if primary is None:
            raise ConfigError("SYNC_PRIMARY_URL is not set: the sync queue needs the primary provider's base URL")
        providers = [Provider("primary", primary, env.get("SYNC_PRIMARY_TOKEN") or None)]
        fallback = env_url(env, "SYNC_FALLBACK_URL", _SCHEMES)
        if fallback is not None:
            providers.append(Provider("fallback", fallback, env.get("SYNC_FALLBACK_TOKEN") or None))
        return cls(tuple(providers), env_bool(env, "SAVE_SYNC_STATS", True))
