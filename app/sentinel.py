"""The Redis Sentinel address of the product, written as one URL so it travels like any other Redis URL.

    redis+sentinel://[[user]:password@]host:port[,host:port...]/master-name[/db][?sentinel_password=...]

The form is rq-dashboard's (and Redis-Sentinel-Url's): the addresses are the sentinels', the password in front of
them is the master's (and its replicas'), and the sentinels' own password, when they require one, is the
`sentinel_password` parameter. `app.config` builds it from REDIS_SENTINELS and friends; `app.connections` turns it
into a client that asks the sentinels where the master is on every new connection, so a failover is followed.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, quote, unquote, urlsplit

from app.errors import ConfigError

SCHEME = "redis+sentinel"
DEFAULT_PORT = 26379


@dataclass(frozen=True)
class SentinelTarget:
    """Where the sentinels are, which master they watch, and the credentials for both."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None

    def url(self) -> str:
        auth = ""
        if self.password is not None:
            auth = f"{quote(self.username or '', safe='')}:{quote(self.password, safe='')}@"
        hosts = ",".join(f"{host}:{port}" for host, port in self.sentinels)
        query = f"?sentinel_password={quote(self.sentinel_password, safe='')}" if self.sentinel_password else ""
        return f"{SCHEME}://{auth}{hosts}/{quote(self.master, safe='')}/{self.db}{query}"


def is_sentinel_url(url: str) -> bool:
    return url.startswith(SCHEME + "://")


def parse_addresses(text: str, where: str) -> tuple[tuple[str, int], ...]:
    """`host:port,host:port` (the port defaults to 26379) as pairs; `where` names the source in errors.

    Raises:
        ConfigError: an address is empty or its port is not a TCP port number.
    """
    found = []
    for item in text.split(","):
        host, _, port = item.strip().rpartition(":") if ":" in item else (item.strip(), "", str(DEFAULT_PORT))
        host = host.strip("[]")  # an IPv6 address is written in brackets
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{where}: {item.strip()!r} is not a sentinel address (host:port)")
        found.append((host, int(port)))
    return tuple(found)


def parse_db(text: str, where: str) -> int:
    if not text.strip().isdigit():
        raise ConfigError(f"{where}: {text!r} is not a Redis database number")
    return int(text)


def parse(url: str) -> SentinelTarget:
    """The target of a `redis+sentinel://` URL.

    Raises:
        ConfigError: the URL lacks sentinels or a master name, or a part of it is malformed (no password is quoted).
    """
    parts = urlsplit(url)
    if parts.scheme != SCHEME:
        raise ConfigError(f"not a {SCHEME}:// URL")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    path = [unquote(p) for p in parts.path.strip("/").split("/") if p]
    if not path:
        raise ConfigError(f"{SCHEME} URL names no master: use {SCHEME}://host:port,.../master-name/db")
    if len(path) > 2:
        raise ConfigError(f"{SCHEME} URL path must be /master-name[/db]")
    query = parse_qs(parts.query)
    return SentinelTarget(
        sentinels=parse_addresses(hosts, f"{SCHEME} URL"),
        master=path[0],
        db=parse_db(path[1], f"{SCHEME} URL") if len(path) == 2 else 0,
        username=unquote(username) or None,
        password=unquote(password) if userinfo else None,
        sentinel_password=query["sentinel_password"][0] if "sentinel_password" in query else None,
    )
