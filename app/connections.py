"""Redis connections built from the settings, and the short way for the commands of the job path."""

from __future__ import annotations

import os
import threading
import time

from redis import Redis
from redis.backoff import NoBackoff
from redis.connection import AbstractConnection
from redis.exceptions import ConnectionError, RedisError, ResponseError, TimeoutError
from redis.retry import Retry
from redis.sentinel import Sentinel

from app import sentinel
from app.config import Settings, redact

try:  # packs a command's arguments in C (redis-py's own packing encodes them one by one in Python)
    from hiredis import pack_command as _pack
except ImportError:  # redis-py's pure Python parser: its own send and read
    _pack = None

#: seconds to wait for Redis to accept a connection or answer
CONNECT_TIMEOUT = 5
#: seconds to wait for a sentinel (its answers are small and quick; a silent one is skipped)
SENTINEL_TIMEOUT = 1


def redis_from_url(url: str, **kwargs) -> Redis:
    """A Redis client for `url` (bytes responses, as RQ expects) with bounded connect and socket timeouts.

    A `redis+sentinel://` URL (see `app.sentinel`) gives a client of the master the sentinels name: each new
    connection asks them, and a connection to a master demoted by a failover is dropped, so commands after a
    failover reach the promoted replica.
    """
    kwargs.setdefault("socket_connect_timeout", CONNECT_TIMEOUT)
    kwargs.setdefault("health_check_interval", 30)
    if not sentinel.is_sentinel_url(url):
        return Redis.from_url(url, **kwargs)
    target = sentinel.parse(url)
    sentinels = Sentinel(
        target.sentinels,
        # A sentinel that hangs must not hold up the search: it gets one short try, then the next one is asked
        # (redis-py's default would retry it ten times).
        sentinel_kwargs={
            "password": target.sentinel_password,
            "socket_connect_timeout": SENTINEL_TIMEOUT,
            "socket_timeout": SENTINEL_TIMEOUT,
            "retry": Retry(NoBackoff(), 0),
        },
    )
    return sentinels.master_for(
        target.master, db=target.db, username=target.username, password=target.password, **kwargs
    )


def get_redis(settings: Settings) -> Redis:
    """The Redis client of these settings."""
    return redis_from_url(settings.redis_url)


def ping(connection: Redis) -> float:
    """Round-trip time of a PING in milliseconds; raises RedisError when Redis does not answer."""
    start = time.perf_counter()
    connection.ping()
    return (time.perf_counter() - start) * 1000


class _Held:
    """A connection one thread keeps out of its pool; it goes back when the thread ends (its locals are dropped)."""

    __slots__ = ("pool", "connection", "threads", "pid", "short")

    def __init__(self, pool, connection, threads: threading.local):
        self.pool, self.connection, self.threads, self.pid = pool, connection, threads, os.getpid()
        # redis-py's own connections only: a class with its own send or read (Sentinel's turns a demoted master's
        # READONLY into ConnectionError, a fake one has no socket) keeps them
        kind = type(connection)
        self.short = (_pack is not None and kind.read_response is AbstractConnection.read_response
                      and kind.send_packed_command is AbstractConnection.send_packed_command)  # fmt: skip

    def exchange(self, calls) -> list:
        """Send `calls` in one write and read their replies (a Redis error as its exception, not raised).

        The short way writes hiredis' packing to the socket and reads through the connection's parser (which
        handles RESP3's push messages as redis-py's read does). redis-py's own send and read are used when the
        connection is not open yet or is due its health check (a PING, so that a connection dropped while idle is
        found before a command is sent on it), and by connections of other kinds (see `short`)."""
        connection = self.connection
        sock = connection._sock
        interval = connection.health_check_interval
        if not self.short or sock is None or (interval and time.monotonic() > connection.next_health_check):
            connection.send_packed_command(connection.pack_commands(calls))
            return [_read_reply(connection) for _ in calls]
        sock.sendall(b"".join([call.packed if call.__class__ is Packed else _pack(call) for call in calls]))
        replies = [connection._parser.read_response() for _ in calls]
        if interval:
            connection.next_health_check = time.monotonic() + interval
        return replies

    def __del__(self):
        if self.pid == os.getpid():  # never touch a socket inherited across fork: the parent still uses it
            try:
                self.pool.release(self.connection)
            except Exception:  # noqa: BLE001 - a pool already torn down at exit
                pass


def call_direct(client: Redis, *args):
    """Run one command on a connection this thread keeps, skipping redis-py's per-command path (pool checkout and
    return, retry wrapper, metrics, argument encoding: ~50 us of CPU a command, more than the round trip on
    loopback). For the commands of the job path (our scripts), whose replies need no parsing callback; arguments
    are str, bytes, int or float.

    The semantics are redis-py's: a connection or timeout error drops the connection and the command goes through
    the client as usual, with its retries (a command that may have run is sent again, as redis-py's retry does);
    Redis errors are raised as they are. A Sentinel connection to a demoted master raises ConnectionError, so the
    command then goes to the new master. The kept connections live with the pool: `close()` disconnects them too.
    """
    held = _kept(client)
    if held is not None:
        try:
            reply = held.exchange((args,))[0]
        except BaseException as exc:
            if not _dropped(held, exc):
                raise
        else:
            if isinstance(reply, ResponseError):
                raise reply
            return reply
    return client.execute_command(*args)  # no kept connection, or it failed on the way: redis-py's path, retries


def call_direct_many(client: Redis, calls: list[tuple]) -> list:
    """`call_direct` for several commands in one round trip (a pipeline without a transaction); returns their
    replies in order, a Redis error in place of its reply (raised by none: the caller decides)."""
    held = _kept(client)
    if held is not None:
        try:
            return held.exchange(calls)
        except BaseException as exc:
            if not _dropped(held, exc):
                raise
    with client.pipeline(transaction=False) as pipe:
        for call in calls:
            pipe.execute_command(*call)
        return pipe.execute(raise_on_error=False)


class Packed(tuple):
    """A command's arguments (redis-py's path sends them) with their RESP form made ahead, `packed` (the short way
    sends it as it is). Made by `CommandTemplate.fill`."""

    packed: bytes


#: marks an argument of a `CommandTemplate` given at each call
SLOT = object()


class CommandTemplate:
    """A command most of whose arguments are the same at every call (a worker's dequeue: its keys, fields and
    policy): their RESP form is made once, and only the arguments in the places marked `SLOT` are packed at each
    `fill`. Packing costs per argument; a worker's dequeue has some fifty, two of which change."""

    def __init__(self, args: tuple):
        self.args = args
        self.slots = [n for n, arg in enumerate(args) if arg is SLOT]
        bounds = [-1, *self.slots, len(args)]
        self.runs = [b"".join(map(_segment, args[start + 1 : end])) for start, end in zip(bounds, bounds[1:])]
        self.runs[0] = b"*%d\r\n" % len(args) + self.runs[0]

    def fill(self, *values) -> Packed:
        args = list(self.args)
        parts = [self.runs[0]]
        for n, value, run in zip(self.slots, values, self.runs[1:], strict=True):
            args[n] = value
            parts += (_segment(value), run)
        command = Packed(args)
        command.packed = b"".join(parts)
        return command


def _segment(arg) -> bytes:
    """One argument in RESP (bulk string)."""
    if arg.__class__ is not bytes:
        arg = (arg if arg.__class__ is str else repr(arg) if arg.__class__ is float else str(arg)).encode()
    return b"$%d\r\n%b\r\n" % (len(arg), arg)


def _read_reply(connection) -> object:
    try:
        return connection.read_response()
    except ResponseError as exc:
        return exc


def _kept(client: Redis) -> _Held | None:
    """This thread's kept connection of `client`'s pool, connected on first use; None when the client serialises
    its own commands (a single-connection client) or no connection can be had now (redis-py's path retries)."""
    if client.connection is not None:
        return None
    pool = client.connection_pool
    threads = pool.__dict__.get("_bullrq_threads") or pool.__dict__.setdefault("_bullrq_threads", threading.local())
    held = getattr(threads, "held", None)
    if held is None or held.pid != os.getpid():
        try:
            held = _Held(pool, pool.get_connection(), threads)
        except (ConnectionError, TimeoutError, OSError):
            return None
        threads.held = held
    return held


def _dropped(held: _Held, exc: BaseException) -> bool:
    """After `exc` on a kept connection: drop the connection unless Redis answered (a Redis error leaves it in
    step), since after an exception raised half-way (a timeout, a signal handler's) a reply may still be on its
    way and would answer the next command. True when the command should go through redis-py's path instead."""
    if isinstance(exc, ResponseError):
        return False
    held.threads.held = None  # given back to the pool when dropped
    held.connection.disconnect()
    return isinstance(exc, ConnectionError | TimeoutError | OSError)


#: the only maxmemory-policy under which Redis never deletes a key on its own
SAFE_POLICY = "noeviction"
#: the variable that lets workers start on a Redis that may evict keys
ALLOW_EVICTION_VARIABLE = "BULLRQ_ALLOW_EVICTION"


def eviction_policy(connection: Redis) -> str | None:
    """Redis' maxmemory-policy, read from INFO (hosted Redis often refuses CONFIG GET); None if it does not say."""
    return connection.info("memory").get("maxmemory_policy")


def eviction_problem(policy: str | None) -> str | None:
    """One line when `policy` lets Redis evict keys (jobs, leases, locks and dedup keys would vanish silently)."""
    if policy is None or policy == SAFE_POLICY:
        return None
    return (f"Redis maxmemory-policy is {policy}: once memory is full it deletes keys (jobs, leases, dedup keys) "
            f"without a word; set maxmemory-policy {SAFE_POLICY}")


def describe_redis_failure(settings: Settings, exc: RedisError) -> str:
    """One line for a person: which Redis, found where, and what went wrong (no password)."""
    where = {"env": "from the environment", "run-dir": "started by scripts/up", "default": "the default"}
    hint = ""
    if settings.redis_url_source == "default":  # nothing published in the run directory: say where we looked
        hint = (f"; no local Redis runs for the run directory {settings.home.root} (start ./scripts/up, or set "
                "REDIS_URL, or BULLRQ_HOME to the run directory scripts/up uses)")
    return f"Redis at {redact(settings.redis_url)} ({where[settings.redis_url_source]}) is unreachable: {exc}{hint}"
