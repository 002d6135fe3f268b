"""The Lua scripts of `app/runtime/lua/`, called by SHA (each runs atomically, in one round trip).

Each file is `<verb>-<number of keys>.lua` ("n" when the count varies) and opens with its KEYS, ARGV and return
value. A line `--#include <name>` takes in `lua/include/<name>.lua` (once per script), or for `keys` the key
families of queues.py, for the keys shared code builds itself (a dependent job's lane, a batch's hash).
Callers pass keys built by `queues.py`: `SCRIPTS.dequeue(client, keys, args)`, where `client` is a Redis client
or a pipeline. redis-py's own Script objects ask Redis whether the script is loaded before every pipeline (one more
round trip per job); these load once and again only when Redis answers NOSCRIPT (after a restart).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import NoScriptError

from app.connections import call_direct, call_direct_many
from queues import BATCH_TTL, HISTORY_STREAM, PRIORITY_RANGE, QUEUES_SET, QueueKeys, batch_key, dependents_key, job_key

LUA_DIR = Path(__file__).parent / "lua"
_INCLUDE = re.compile(r"^--#include (\w+)$", re.MULTILINE)
#: commands whose replies are used as Redis sends them (redis-py parses nothing for them, or they are not read)
_RAW_REPLIES = frozenset({"EVALSHA", "WAIT", "BLPOP"})


class LuaScript:
    """One script of `app/runtime/lua/`."""

    def __init__(self, path: Path, scripts: Scripts):
        self.name = path.stem.rsplit("-", 1)[0]
        self.source = _with_includes(path.read_text(), set())
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()
        self._scripts = scripts

    def command(self, keys: list, args: list) -> tuple:
        """The call as a command, for `Scripts.run`."""
        return ("EVALSHA", self.sha, len(keys), *keys, *args)

    def __call__(self, client: Redis | Pipeline, keys: list, args: list):
        """Run the script; on a pipeline the call is queued (run it with `execute`)."""
        if type(client) is not Redis and isinstance(client, Pipeline):  # (Pipeline's isinstance check is slow)
            return client.evalsha(self.sha, len(keys), *keys, *args)
        try:
            return call_direct(client, "EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            self._scripts.load(client)
            return call_direct(client, "EVALSHA", self.sha, len(keys), *keys, *args)


def _with_includes(source: str, included: set[str]) -> str:
    def include(match: re.Match) -> str:
        name = match[1]
        if name in included:
            return ""
        included.add(name)
        if name == "keys":
            return key_families()
        return _with_includes((LUA_DIR / "include" / f"{name}.lua").read_text(), included)

    return _INCLUDE.sub(include, source)


def key_families() -> str:
    """Lua: `key_of(family, name[, name2])`, a key of each family of queues.py around its names (a queue's name, a
    job's id, a group's), read off keys built for marker names, so queues.py stays the one place that spells them;
    and the constants. A chain of comparisons of interned strings, not a table: a table built on every call cost
    Redis about 10 µs a script."""
    queue, group = "\x00", "\x01"
    keys = QueueKeys(queue)
    families = {
        "job": job_key(queue), "dependents": dependents_key(queue), "batch": batch_key(queue),
        "deferred": keys.deferred, "marker": keys.marker, "queue": keys.queue, "failed": keys.failed,
        "canceled": keys.canceled, "stats": keys.stats, "turn": keys.turn, "group_limits": keys.group_limits,
        **{f"lane{p}": keys.lane(p) for p in PRIORITY_RANGE}, **{f"group{p}": keys.group_lane(group, p) for p in
        PRIORITY_RANGE}, **{f"ring{p}": keys.ring(p) for p in PRIORITY_RANGE},
    }  # fmt: skip
    branches = []
    for family, key in families.items():
        parts = [json.dumps(part) for part in re.split(f"[{queue}{group}]", key)]
        names = ["name", "name2"][: len(parts) - 1]
        built = " .. ".join(part for pair in zip(parts, [*names, None]) for part in pair if part and part != '""')
        branches.append(f"  if family == {json.dumps(family)} then return {built} end\n")
    return ("local function key_of(family, name, name2)\n" + "".join(branches)
            + "  error('no key family ' .. family)\nend\n"
            f"local QUEUES_SET, HISTORY_STREAM, BATCH_TTL = {json.dumps(QUEUES_SET)}, {json.dumps(HISTORY_STREAM)}, "
            f"{BATCH_TTL}\n")


class Scripts:
    """Every script, as an attribute named by its verb."""

    def __init__(self, directory: Path = LUA_DIR):
        self.all = [LuaScript(path, self) for path in sorted(directory.glob("*.lua"))]
        for script in self.all:
            setattr(self, script.name, script)

    enqueue: LuaScript
    dequeue: LuaScript
    finish: LuaScript
    promote: LuaScript
    recover: LuaScript
    renew: LuaScript
    cancel: LuaScript
    requeue: LuaScript
    delete: LuaScript
    compact: LuaScript
    seal: LuaScript
    recheck: LuaScript

    def load(self, connection: Redis) -> None:
        """Load every script into Redis's script cache: after any NOSCRIPT, all of them, so a pipeline never finds
        one script of its calls missing while the others run."""
        with connection.pipeline(transaction=False) as pipe:
            for script in self.all:
                pipe.script_load(script.source)
            pipe.execute()

    def execute(self, connection: Redis, fill: Callable[[Pipeline], None]) -> list:
        """Run the calls that `fill` queues on a pipeline (script calls and any other commands), in one round trip;
        returns their replies, as `run` does."""
        with connection.pipeline(transaction=False) as pipe:
            fill(pipe)
            calls = [args for args, _options in pipe.command_stack]
            if all(call[0] in _RAW_REPLIES for call in calls):  # the short way: no reply needs redis-py's parsing
                return self.run(connection, calls)
            return self._answered(connection, calls, pipe.execute(raise_on_error=False))

    def run(self, connection: Redis, calls: list[tuple]) -> list:
        """Run commands whose replies need no parsing (script calls built with `LuaScript.command`, WAIT, BLPOP) in
        one round trip, without a pipeline object; returns their replies.

        A call answered NOSCRIPT (Redis restarted, or flushed its script cache) did not run, while the calls around
        it did: the scripts are loaded and those calls alone are run again (running them all again would run the
        others twice: a finish and a dequeue would take a second job and leave the first taken, unrun).
        A Redis error in any reply is raised once every call has been answered.
        """
        return self._answered(connection, calls, call_direct_many(connection, calls))

    def _answered(self, connection: Redis, calls: list[tuple], replies: list) -> list:
        missing = [n for n, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:  # and a WAIT after them again, to count the replicas that have their writes too
            missing += [n for n, call in enumerate(calls) if n > missing[0] and call[0] == "WAIT"]
            self.load(connection)
            for n, reply in zip(missing, call_direct_many(connection, [calls[n] for n in missing]), strict=True):
                replies[n] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies


SCRIPTS = Scripts()
