"""The Redis Sentinel address of the product, written as one URL so it travels like any other Redis URL.

    redis+sentinel://[[user]:password@]host:port[,host:port...]/master-name[/db][?sentinel_password=...]

The shape is rq-dashboard's (Redis-Sentinel-Url's): the addresses are the sentinels', the password in front of them
is the master's (and its replicas'). Added here: percent-escapes are decoded, and the sentinels' own password, when
they require one, is the `sentinel_password` parameter. `app.config` builds the URL from REDIS_SENTINELS and
friends; `app.connections` turns it into a client that asks the sentinels where the master is on every new
connection, so a failover is followed.

Errors never quote the URL: any part of it may hold a password.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

from app.errors import ConfigError

SCHEME = "redis+sentinel"
DEFAULT_PORT = 26379
#: the query parameter holding the sentinels' password
PASSWORD_PARAM = "sentinel_password"
_ADDRESS = re.compile(r"^(?:\[(?P<ipv6>[0-9a-fA-F:.]+)\]|(?P<host>[^:\[\]]+))(?::(?P<port>[0-9]+))?$")


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
        hosts = ",".join(f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in self.sentinels)
        query = f"?{PASSWORD_PARAM}={quote(self.sentinel_password, safe='')}" if self.sentinel_password else ""
        return f"{SCHEME}://{auth}{hosts}/{quote(self.master, safe='')}/{self.db}{query}"


def is_sentinel_url(url: str) -> bool:
    return url.startswith(SCHEME + "://")


def parse_addresses(text: str, where: str) -> tuple[tuple[str, int], ...]:
    """`host:port,[ipv6]:port,...` (the port defaults to 26379) as pairs; `where` names the source in errors.

    Raises:
        ConfigError: an address is not host[:port] with a TCP port number (named by position, never quoted).
    """
    found = []
    for position, item in enumerate(text.split(","), 1):
        match = _ADDRESS.match(item.strip())
        port = int(match["port"]) if match and match["port"] else DEFAULT_PORT
        if match is None or not 0 < port < 65536:
            raise ConfigError(
                f"{where}: sentinel address {position} is not host:port (write an IPv6 address as [addr]:port)"
            )
        found.append((match["ipv6"] or match["host"], port))
    return tuple(found)


def parse_db(text: str, where: str) -> int:
    """A Redis database number (0 or more).

    Raises:
        ConfigError: `text` is not one.
    """
    if not (text.isascii() and text.isdigit()):
        raise ConfigError(f"{where}: the database is not a number (0, 1, ...)")
    return int(text)


def parse(url: str) -> SentinelTarget:
    """The target of a `redis+sentinel://` URL.

    Raises:
        ConfigError: the URL lacks sentinels or a master name, or a part of it is malformed.
    """
    if not is_sentinel_url(url):
        raise ConfigError(f"not a {SCHEME}:// URL")
    # split by hand: urllib rejects a list of hosts holding a bracketed IPv6 address
    rest, _, query = url[len(SCHEME) + 3 :].partition("?")
    rest = rest.partition("#")[0]
    netloc, _, path_text = rest.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    path = [unquote(p) for p in path_text.split("/") if p]
    if not path or len(path) > 2:
        raise ConfigError(f"{SCHEME} URL must end in /master-name or /master-name/db")
    params = dict(part.partition("=")[::2] for part in query.split("&") if part)
    return SentinelTarget(
        sentinels=parse_addresses(hosts, f"{SCHEME} URL"),
        master=path[0],
        db=parse_db(path[1], f"{SCHEME} URL") if len(path) == 2 else 0,
        username=unquote(username) or None,
        password=unquote(password) if userinfo else None,
        sentinel_password=unquote(params[PASSWORD_PARAM]) if params.get(PASSWORD_PARAM) else None,
    )
